#!/usr/bin/env bash
# Runs every test of the workspace: unit tests of each crate and the integration tests that
# drive the real binary. Set-up it does itself: starts a single-node Slurm cluster for the
# Slurm executor's tests (installing Debian's packages when missing; scripts/start-slurm.sh).
# MIPIPE_SKIP_SLURM=1 skips that, and those tests then skip themselves. Also makes a Python
# venv with pyarrow (in ~/.cache/mipipe/test-venv) when missing.
# Ends with one line totalling every test binary: `tests: N passed, N failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${MIPIPE_SKIP_SLURM:-0}" != 1 ]; then
  bash scripts/start-slurm.sh
  export MIPIPE_REQUIRE_SLURM=1
fi
# A Python with pyarrow, to check that our Parquet tables open in it.
venv="${MIPIPE_TOOLS:-$HOME/.cache/mipipe}/test-venv"
if ! "$venv/bin/python" -c "import pyarrow" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q pyarrow
fi
export MIPIPE_TEST_PYTHON="$venv/bin/python" MIPIPE_REQUIRE_PYTHON=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
