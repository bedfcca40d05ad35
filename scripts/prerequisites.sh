#!/usr/bin/env bash
# Checks what the build needs and says how to get what is missing (sourced by run.sh and
# test.sh): Rust (cargo, at least the workspace's rust-version), a C++ compiler (torch-sys
# compiles its C++ bridge), Python 3 with venv (the libtorch and test set-ups use venvs).
need_rust=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
missing=0
if ! command -v cargo >/dev/null; then
  echo "prerequisites: Rust is missing; install it with rustup: curl https://sh.rustup.rs -sSf | sh (then open a new shell)" >&2
  missing=1
else
  have_rust=$(rustc --version | awk '{print $2}')
  if [ "$(printf '%s\n%s\n' "$need_rust" "$have_rust" | sort -V | head -1)" != "$need_rust" ]; then
    echo "prerequisites: Rust $have_rust is older than the $need_rust this workspace needs; run \`rustup update stable\`" >&2
    missing=1
  fi
fi
if ! command -v c++ >/dev/null && ! command -v g++ >/dev/null && ! command -v clang++ >/dev/null; then
  echo "prerequisites: no C++ compiler (torch-sys builds C++); on Debian/Ubuntu: apt-get install g++" >&2
  missing=1
fi
if ! command -v python3 >/dev/null; then
  echo "prerequisites: Python 3 is missing; on Debian/Ubuntu: apt-get install python3 python3-venv" >&2
  missing=1
elif ! python3 -c "import ensurepip, venv" 2>/dev/null; then
  echo "prerequisites: Python's venv module is missing; on Debian/Ubuntu: apt-get install python3-venv" >&2
  missing=1
fi
if [ "$missing" = 1 ]; then
  exit 2
fi
