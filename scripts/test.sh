#!/usr/bin/env bash
# Runs every test of the workspace: unit tests of each crate and the integration tests that
# drive the real binary. Set-up it does itself, when missing:
#   - libtorch 2.11.0 for the torch stage crate (scripts/setup-libtorch.sh);
#   - a single-node Slurm cluster for the Slurm executor's tests (scripts/start-slurm.sh,
#     Debian's packages, in its own prefix and ports: it never touches an existing Slurm);
#     MIPIPE_SKIP_SLURM=1 skips it and those tests then skip themselves;
#   - a Python venv with pyarrow (~/.cache/mipipe/test-venv) to check our Parquet tables;
#   - pdflatex (Debian's texlive-latex-base and -recommended) to compile the LaTeX tables;
#   - headless Chromium (Debian's chromium) to open the HTML report as a reader would.
# Ends with one line totalling every test binary: `tests: N passed, N failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prerequisites.sh

bash scripts/setup-libtorch.sh

if [ "${MIPIPE_SKIP_SLURM:-0}" != 1 ]; then
  # The test cluster lives in its own prefix and ports; SLURM_CONF points the tests at it.
  bash scripts/start-slurm.sh
  eval "$(bash scripts/start-slurm.sh env)"
  export MIPIPE_REQUIRE_SLURM=1
fi

venv="${MIPIPE_TOOLS:-$HOME/.cache/mipipe}/test-venv"
if ! "$venv/bin/python" -c "import pyarrow" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q pyarrow
fi
export MIPIPE_TEST_PYTHON="$venv/bin/python" MIPIPE_REQUIRE_PYTHON=1

if ! command -v pdflatex >/dev/null && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    texlive-latex-base texlive-latex-recommended >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      texlive-latex-base texlive-latex-recommended >/dev/null; }
fi
if command -v pdflatex >/dev/null; then
  export MIPIPE_REQUIRE_PDFLATEX=1
fi

if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
fi
if command -v chromium >/dev/null; then
  export MIPIPE_REQUIRE_CHROMIUM=1
fi

# The torch stage kinds run in `mipipe-torch-worker`, which must sit next to the `mipipe` the
# integration tests drive (target/debug); `cargo test` alone builds only the package's own.
cargo build --workspace --locked

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
