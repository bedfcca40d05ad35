#!/usr/bin/env bash
# Prediction benchmarks (issue 10), on this machine's CPU, after `mipipe run
# pipelines/ablation.yaml` has filled the cache (the README's first command):
#   1. `predict` items per second with the key-value cache against the uncached decoding it
#      replaced (one full pass per generated token and per option), on the ablation's vanilla
#      llava checkpoint and its test rows, same run, one thread, batch 64 as the stage
#      (examples/predict_throughput.rs); both paths must give the same answers;
#   2. the share of the ablation's stage time spent in `predict` stages, from the cache entries.
set -euo pipefail
cd "$(dirname "$0")/.."
pipeline="${PIPELINE:-pipelines/ablation.yaml}"
family="${FAMILY:-llava}"
cargo build --release --quiet -p mipipe-stage-torch --example predict_throughput
cargo build --release --quiet
mipipe=target/release/mipipe
model=$("$mipipe" show "pretrain[family=$family,seed=0]" "$pipeline" --json 2>/dev/null \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["entry"]["outputs"]["model"]["digest"])' || true)
if [ -z "$model" ]; then
  echo "bench/predict.sh: no cached pretrain[family=$family,seed=0]; run \`mipipe run $pipeline\` first" >&2
  exit 2
fi
dir=$(dirname "$pipeline")
model_dir="$dir/.mipipe/trees/v1/$model"
items=$("$mipipe" show conditions "$pipeline" --json | python3 -c 'import json,sys; d=json.load(sys.stdin)["entry"]["outputs"]["items"]["digest"]; print(d[:2] + "/" + d[2:])')
items="$dir/.mipipe/objects/v1/$items"
echo "== predict throughput: uncached vs cached ($family, ${ITEMS:-512} test rows)"
target/release/examples/predict_throughput "$model_dir" "$items" "${ITEMS:-512}" 64 8
echo "== share of stage time per kind (the cache entries the lockfile of $pipeline names)"
python3 - "$pipeline" <<'PY'
import json, os, sys
pipeline = sys.argv[1]
lock = json.load(open(os.path.splitext(pipeline)[0] + ".lock"))["stages"]
actions = os.path.join(os.path.dirname(pipeline), ".mipipe", "actions", "v1")
totals = {}
for stage, record in lock.items():
    key = record["key"]
    entry = json.load(open(os.path.join(actions, key[:2], key + ".json")))
    totals[entry["kind"]] = totals.get(entry["kind"], 0) + entry["duration_ms"] / 1000
all_seconds = sum(totals.values())
for kind, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
    print(json.dumps({"kind": kind, "seconds": round(seconds, 1), "share": round(seconds / all_seconds, 3)}))
PY
