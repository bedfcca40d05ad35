#!/usr/bin/env bash
# The main job: builds mipipe and its torch worker (release) and runs the paper's ablation study
# on the embedded benchmark, pipelines/ablation.yaml. Extra arguments go to `mipipe run`
# (e.g. `bash scripts/run.sh -j 1`, or `PIPELINE=pipelines/quick.yaml bash scripts/run.sh`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prerequisites.sh
bash scripts/setup-libtorch.sh
cargo build --release --locked
pipeline="${PIPELINE:-pipelines/ablation.yaml}"
target/release/mipipe run "$pipeline" "$@"
results="$(dirname "$pipeline")/results/$(basename "$pipeline" .yaml)"
echo "Tables and figures: $results/ (LaTeX, Markdown, CSV; provenance CSVs name the stage behind every cell)" >&2
