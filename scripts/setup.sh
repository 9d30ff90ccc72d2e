#!/usr/bin/env bash
# One-command, idempotent environment setup for gpicture (called by `make setup`).
#
# Creates .venv/ at the repository root and installs: the CPU build of torch 2.13.0
# (pinned: an unpinned torch would pull several GB of CUDA wheels), the project in
# editable mode with its dev extras, the Waymo protos without their TensorFlow pins,
# torch-scatter and MinkowskiEngine 0.5.4 built from source, and the native ops of
# csrc/. Built wheels are cached under $GPICTURE_WHEEL_CACHE (default
# ~/.cache/gpicture/wheels) and .wheels/, so a second setup takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=.venv
PIP=pip_quiet
PY="$VENV/bin/python"
CACHE=${GPICTURE_WHEEL_CACHE:-$HOME/.cache/gpicture/wheels}
mkdir -p "$CACHE" .wheels
# pip, minus the warnings about this machine's missing local find-links folders.
pip_quiet() { "$VENV/bin/pip" --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location" >&2); }
step() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
have() { "$PY" - "$@" <<'PY' >/dev/null 2>&1
import collections, collections.abc, importlib, sys
collections.Sequence = collections.abc.Sequence  # MinkowskiEngine 0.5.4 needs it on Python >= 3.10
for name in sys.argv[1:]:
    importlib.import_module(name)
PY
}
cached_wheel() { # name-glob -> path of a cached wheel, or nothing
  ls .wheels/$1 "$CACHE"/$1 2>/dev/null | head -n 1 || true
}

# 1. System packages (BLAS for MinkowskiEngine).
if ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
  step "apt: installing libopenblas-dev"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libopenblas-dev >/dev/null
fi

# 2. The virtual environment and the pinned CPU torch.
if [ ! -x "$PY" ]; then
  step "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if ! have torch numpy setuptools; then
  step "installing torch==2.13.0 (CPU build) and numpy<2"
  $PIP install -q --upgrade pip "setuptools>=77" wheel ninja
  $PIP install -q torch==2.13.0 "numpy<2"
fi

# 3. The project (editable) and its pinned dependencies; re-run only when pyproject changes.
DEPS_HASH=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$VENV/.deps-hash" 2>/dev/null)" != "$DEPS_HASH" ]; then
  step "installing gpicture (editable) and its dependencies"
  $PIP install -q -e ".[dev]"
  step "installing the Waymo protos (--no-deps: their pins would break numpy/zarr)"
  $PIP install -q --no-deps waymo-open-dataset-tf-2-12-0==1.6.7
  echo "$DEPS_HASH" > "$VENV/.deps-hash"
fi

# 4. torch-scatter 2.1.2: no wheel for torch 2.13, built from source once (~5 min).
if ! have torch_scatter; then
  whl=$(cached_wheel 'torch_scatter-2.1.2-*.whl')
  if [ -z "$whl" ]; then
    step "building torch-scatter 2.1.2 from source (about 5 minutes, once)"
    FORCE_ONLY_CPU=1 MAX_JOBS=${MAX_JOBS:-2} $PIP wheel -q --no-build-isolation --no-deps -w "$CACHE" torch-scatter==2.1.2
    whl=$(cached_wheel 'torch_scatter-2.1.2-*.whl')
  fi
  $PIP install -q --no-deps "$whl"
fi

# 5. MinkowskiEngine 0.5.4 on the CPU (~6 min, once): its setup.py needs numpy<2 and
#    setuptools<60 while torch wants setuptools>=77, so it is built in a throwaway venv.
if ! have MinkowskiEngine; then
  whl=$(cached_wheel 'MinkowskiEngine-0.5.4-*.whl')
  if [ -z "$whl" ]; then
    step "building MinkowskiEngine 0.5.4 (CPU, OpenBLAS) from source (about 6 minutes, once)"
    b=$(mktemp -d)
    trap 'rm -rf "$b"' EXIT
    "$PYTHON" -m venv "$b/venv"
    "$b/venv/bin/pip" install -q --disable-pip-version-check torch==2.13.0 "numpy<2" wheel ninja
    "$b/venv/bin/pip" install -q --disable-pip-version-check "setuptools<60" 2>/dev/null
    (cd "$b" && CPU_ONLY=1 MAX_JOBS=${MAX_JOBS:-2} "$b/venv/bin/pip" wheel -q --disable-pip-version-check \
        --no-build-isolation --no-deps -w "$CACHE" MinkowskiEngine==0.5.4)
    whl=$(cached_wheel 'MinkowskiEngine-0.5.4-*.whl')
  fi
  $PIP install -q --no-deps "$whl"
fi

# 6. The native ops of csrc/ (CPU always; CUDA where nvcc and a CUDA torch exist).
#    Rebuilt when a source changes; the package falls back to pure torch without them.
NATIVE_HASH=$(cat csrc/* scripts/build_native.py | sha256sum | cut -c1-16)
if [ "$(cat "$VENV/.native-hash" 2>/dev/null)" != "$NATIVE_HASH" ] || ! have torch gpicture._native; then
  step "building the native ops of csrc/"
  "$PY" scripts/build_native.py
  echo "$NATIVE_HASH" > "$VENV/.native-hash"
fi

step "environment ready: $("$PY" -c 'import torch; print("torch", torch.__version__)')"
