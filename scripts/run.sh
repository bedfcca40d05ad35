#!/usr/bin/env bash
# Builds mipipe (release) and runs the default pipeline. Extra arguments go to `mipipe run`.
#
# The default pipeline is the shell example in pipelines/examples/shell/ until the embedded
# benchmark and pipelines/ablation.yaml land (see README.md, "Status").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-libtorch.sh
cargo build --release --locked --bin mipipe
exec target/release/mipipe run pipelines/examples/shell/mipipe.yaml "$@"
