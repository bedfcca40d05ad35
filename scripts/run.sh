#!/usr/bin/env bash
# Builds mipipe (release) and runs the default pipeline. Extra arguments go to `mipipe run`.
#
# The default pipeline is pipelines/embedded-data.yaml (the embedded benchmark and every
# perturbed condition) until pipelines/ablation.yaml lands (see README.md, "Status").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-libtorch.sh
cargo build --release --locked --bin mipipe
target/release/mipipe run pipelines/embedded-data.yaml "$@"
echo "Tables: pipelines/results/embedded/ (Parquet; docs/data-stages.md describes the columns)" >&2
