#!/usr/bin/env bash
# Runs every test of the workspace: unit tests of each crate and the integration tests that
# drive the real binary. Needs only the Rust toolchain; installs nothing else today.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"
