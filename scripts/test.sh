#!/usr/bin/env bash
# Runs every test of the workspace: unit tests of each crate and the integration tests that
# drive the real binary. Set-up it does itself: starts a single-node Slurm cluster for the
# Slurm executor's tests (installing Debian's packages when missing; scripts/start-slurm.sh).
# MIPIPE_SKIP_SLURM=1 skips that, and those tests then skip themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${MIPIPE_SKIP_SLURM:-0}" != 1 ]; then
  bash scripts/start-slurm.sh
  export MIPIPE_REQUIRE_SLURM=1
fi
cargo test --workspace --locked "$@"
