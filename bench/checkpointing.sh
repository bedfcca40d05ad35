#!/usr/bin/env bash
# Gradient checkpointing of the decoder's blocks (issue 14), on this machine's CPU: peak
# resident memory and step time of one training step with and without it, for fft_mix (one
# forward pass a step) and ours (clean, K = 2 PGD and adversarial passes), each setting in its
# own process (a process's peak only grows), alternating twice. An 8-layer, 256-wide decoder
# over 8 rows of 256 tokens (stages/torch/examples/checkpointing_memory.rs), so activations,
# not weights, make the peak.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-libtorch.sh
cargo build --release --quiet -p mipipe-stage-torch --example checkpointing_memory
bin=target/release/examples/checkpointing_memory
for method in fft_mix ours; do
  for _ in 1 2; do
    "$bin" off "$method" 3
    "$bin" on "$method" 3
  done
done
