#!/usr/bin/env bash
# Makes libtorch 2.11.0 available to the build, when missing: a venv outside the clone
# (~/.cache/mipipe/torch-2.11.0, or $MIPIPE_TOOLS/torch-2.11.0) with PyPI's torch wheel and only
# the two CUDA libraries its CPU library links (cudart, cupti; found with readelf), and a
# `.libtorch` symlink in the repository that `.cargo/config.toml` points LIBTORCH at.
# The same wheel is the cu130 build the GPU machines ship, so one binary serves both.
set -euo pipefail
cd "$(dirname "$0")/.."
version=2.11.0
venv="${MIPIPE_TOOLS:-$HOME/.cache/mipipe}/torch-$version"
python="$venv/bin/python"
if ! "$python" -c "import importlib.util as u; assert u.find_spec('torch')" 2>/dev/null; then
  echo "setup-libtorch: installing torch $version into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --no-deps "torch==$version" \
    "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cupti==13.0.85"
fi
torch_dir=$("$python" -c "import os, importlib.util as u; print(os.path.dirname(u.find_spec('torch').origin))")
# torch-sys checks the version only when this file exists.
printf '%s' "$version" > "$torch_dir/build-version"
ln -sfn "$torch_dir" .libtorch
echo "setup-libtorch: LIBTORCH=.libtorch -> $torch_dir" >&2
