#!/usr/bin/env bash
# Makes libtorch 2.11.0 available to the build, when missing: a venv outside the clone
# (~/.cache/mipipe/torch-2.11.0, or $MIPIPE_TOOLS/torch-2.11.0) with PyPI's torch wheel, and a
# `.libtorch` symlink in the repository that `.cargo/config.toml` points LIBTORCH at.
# The same wheel is the cu130 build the GPU machines ship, so one binary serves both.
#   - Without a GPU: the wheel and only the two CUDA libraries its CPU library links (cudart,
#     cupti; found with readelf), about 1 GB.
#   - With an NVIDIA GPU (`nvidia-smi` works, or MIPIPE_CUDA=1): the wheel with all its
#     dependencies (cuBLAS, cuDNN, NCCL, cuSPARSE, ...: what `libtorch_cuda.so` links, about
#     4.9 GB), so `device: auto` trains on the GPU; checked by loading libtorch_cuda.so.
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
if [ "${MIPIPE_CUDA:-}" = 1 ] || { [ "${MIPIPE_CUDA:-}" != 0 ] && nvidia-smi -L >/dev/null 2>&1; }; then
  if ! "$python" -c "import ctypes, os, torch; ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), 'lib', 'libtorch_cuda.so'))" 2>/dev/null; then
    echo "setup-libtorch: a GPU is here: installing torch $version with its CUDA libraries" >&2
    "$venv/bin/pip" install -q "torch==$version"
    "$python" -c "import ctypes, os, torch; ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), 'lib', 'libtorch_cuda.so'))" \
      || { echo "setup-libtorch: libtorch_cuda.so still does not load" >&2; exit 3; }
  fi
fi
torch_dir=$("$python" -c "import os, importlib.util as u; print(os.path.dirname(u.find_spec('torch').origin))")
# torch-sys checks the version only when this file exists.
printf '%s' "$version" > "$torch_dir/build-version"
ln -sfn "$torch_dir" .libtorch
echo "setup-libtorch: LIBTORCH=.libtorch -> $torch_dir" >&2
