#!/usr/bin/env bash
# Training-step benchmarks of the torch crate (issue 3), on this machine's CPU:
#   1. every ablation method's step time relative to fft_mix (examples/method_step_time.rs);
#   2. the fft_mix step in tch against the same model and step in plain PyTorch eager
#      (bench/torch_eager.py), alternating three times each, same libtorch 2.11.0.
# Installs torch 2.11.0 with its dependencies into ~/.cache/mipipe/torch-bench when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-libtorch.sh
venv="${MIPIPE_TOOLS:-$HOME/.cache/mipipe}/torch-bench"
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.11.0 numpy
fi
cargo build --release --quiet -p mipipe-stage-torch --example method_step_time
bin=target/release/examples/method_step_time
echo "== methods relative to fft_mix"
"$bin" llava 5
echo "== tch vs PyTorch eager (fft_mix step, 10 steps each, alternating)"
for _ in 1 2 3; do
  "$bin" llava 10 fft_mix
  "$venv/bin/python" bench/torch_eager.py 10
done
