#!/usr/bin/env bash
# One-command, idempotent environment setup for gpicture (called by `make setup`).
#
# Creates .venv/ at the repository root with uv (scripts/uv.sh installs the pinned uv on
# first use) and makes it exactly requirements.lock (`uv pip sync`: nothing more, nothing
# less, every hash checked): the CPU build of torch 2.13.0 (the wheel in /opt/wheels; an
# unpinned torch would pull several GB of CUDA wheels), the pinned dependencies and dev
# tools, the Waymo protos and rerun-sdk without their declared dependencies, torch-scatter
# 2.1.2 and MinkowskiEngine 0.5.4 built from their locked sdists, gpicture itself
# (editable), then the native ops of csrc/. The two source builds and the native ops are
# cached under $GPICTURE_WHEEL_CACHE (default ~/.cache/gpicture/wheels; .wheels/ is looked
# in too) and uv's downloads in its own cache, so a clean clone takes seconds when they are
# warm, and a second setup (a stamp and one import) about 4 s.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=.venv
PY="$VENV/bin/python"
CACHE=${GPICTURE_WHEEL_CACHE:-$HOME/.cache/gpicture/wheels}
export UV_NO_CONFIG=1  # this checkout's settings only: no uv.toml of the user's
mkdir -p "$CACHE" .wheels
CACHE=$(cd "$CACHE" && pwd)  # absolute: the builds run elsewhere
step() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
lock() { "$PYTHON" scripts/lock.py "$@"; }
# probe MODULE...: one line `missing NAME` per module that does not import in .venv (all of
# them without a venv), then `ready torch VERSION`; one interpreter, so a second setup is quick.
probe() { [ -x "$PY" ] || { printf 'missing %s\n' "$@"; return; }; "$PY" - "$@" <<'PY' 2>/dev/null || printf 'missing %s\n' "$@"
import collections, collections.abc, importlib, sys
collections.Sequence = collections.abc.Sequence  # MinkowskiEngine 0.5.4 needs it on Python >= 3.10
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception:
        print("missing", name)
import torch
print("ready torch", torch.__version__)
PY
}
UV=$(bash scripts/uv.sh)
TORCH_WHEELS=${GPICTURE_TORCH_WHEELS:-$(lock setting find-links)}
uvpip() { "$UV" pip "$@" --find-links "$TORCH_WHEELS"; }

# 1. System packages (BLAS for MinkowskiEngine).
if ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
  step "apt: installing libopenblas-dev"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libopenblas-dev >/dev/null
fi

# 2. The lock: installed as committed; a stale one is said (tests/test_lock.py fails on it).
lock check || echo "warning: installing requirements.lock as committed; run \`make lock\` to refresh it" >&2
[ -d "$TORCH_WHEELS" ] || { echo "error: $TORCH_WHEELS: no such folder: requirements.lock takes the CPU torch wheel from there (set GPICTURE_TORCH_WHEELS)" >&2; exit 2; }

# 3. The source builds, once, from the locked sdists (hash-checked by pip) in throwaway
#    venvs of the locked torch, numpy and ninja (hash-checked by uv): torch-scatter 2.1.2
#    has no wheel for torch 2.13 (~5 min); MinkowskiEngine 0.5.4 (~6 min, CPU, OpenBLAS)
#    needs setuptools<60 to build. A wheel in .wheels/ or the cache is used as it is.
cached_wheel() { # dist name, version -> path of a cached wheel, or nothing
  (shopt -s nullglob nocaseglob; for w in .wheels/"${1//-/_}-$2"-*.whl "$CACHE"/"${1//-/_}-$2"-*.whl; do
     echo "$(cd "$(dirname "$w")" && pwd)/$(basename "$w")"; done) | head -n 1
}
build_wheel() { # name, version, setuptools requirement, environment for the build...
  local name=$1 version=$2 setuptools=$3; shift 3
  b=$(mktemp -d)
  trap 'rm -rf "$b"' EXIT
  "$UV" venv -q --python "$PYTHON" "$b/venv"
  lock section resolved > "$b/constraints.txt"  # the locked versions and hashes
  uvpip install -q --python "$b/venv/bin/python" -c "$b/constraints.txt" torch numpy ninja packaging
  uvpip install -q --python "$b/venv/bin/python" --no-deps pip==26.3 wheel==0.48.0 "$setuptools"
  lock entries "$name" > "$b/sdist.txt"
  (cd "$b" && env "$@" MAX_JOBS="${MAX_JOBS:-2}" "$b/venv/bin/pip" wheel -q --disable-pip-version-check \
      --no-build-isolation --no-deps --require-hashes -w "$CACHE" -r sdist.txt 2> >(grep -v "^WARNING: Location" >&2))
  rm -rf "$b"
  trap - EXIT
}
wheels=()
while read -r pin; do
  name=${pin%%==*} version=${pin#*==}
  whl=$(cached_wheel "$name" "$version")
  if [ -z "$whl" ]; then
    case $name in
      torch-scatter)
        step "building torch-scatter $version from source (about 5 minutes, once)"
        build_wheel "$name" "$version" "$(lock pin setuptools)" FORCE_ONLY_CPU=1 ;;
      minkowskiengine)
        step "building MinkowskiEngine $version (CPU, OpenBLAS) from source (about 6 minutes, once)"
        build_wheel "$name" "$version" "setuptools==59.8.0" CPU_ONLY=1 ;;
      *) echo "error: requirements.lock: no build recipe in scripts/setup.sh for the source build $name" >&2; exit 2 ;;
    esac
    whl=$(cached_wheel "$name" "$version")
    [ -n "$whl" ] || { echo "error: $CACHE: the build of $name $version left no wheel there" >&2; exit 2; }
  fi
  wheels+=("$whl")
done < <(lock source-builds)

# 4. The venv, synced to the lock; skipped when nothing it depends on changed and it imports.
STAMP=$( { cat requirements.lock scripts/setup.sh scripts/lock.py; "$PYTHON" --version; printf '%s\n' "${wheels[@]}"; } | sha256sum | cut -c1-16)
MODULES=(torch torch_scatter MinkowskiEngine gpicture._native)
state=$(probe "${MODULES[@]}")
if [ "$(cat "$VENV/.setup-stamp" 2>/dev/null)" != "$STAMP" ] || grep -Eq "^missing (torch|torch_scatter|MinkowskiEngine)$" <<<"$state"; then
  if [ ! -x "$PY" ]; then
    step "creating $VENV"
    "$UV" venv -q --clear --python "$PYTHON" "$VENV"
  fi
  step "syncing $VENV to requirements.lock (uv pip sync)"
  lock sync-file "$VENV/.lock-sync.txt" "${wheels[@]/#/--wheel=}"
  uvpip sync -q --python "$PY" "$VENV/.lock-sync.txt"
  echo "$STAMP" > "$VENV/.setup-stamp"
  state=$(probe "${MODULES[@]}")
fi

# 5. The native ops of csrc/ (CPU always; CUDA where nvcc and a CUDA torch exist), rebuilt
#    when a source, torch, Python or nvcc changes (~1.5 min) and kept in the wheel cache by
#    that key, so a fresh clone copies them. The package falls back to pure torch without them.
NATIVE_KEY=$( { cat csrc/* scripts/build_native.py; lock pin torch; "$PYTHON" --version; command -v nvcc || true; uname -m; } | sha256sum | cut -c1-16)
NATIVE_CACHE="$CACHE/gpicture-native-$NATIVE_KEY"
if [ "$(cat "$VENV/.native-hash" 2>/dev/null)" != "$NATIVE_KEY" ] || grep -q "^missing gpicture._native$" <<<"$state"; then
  if compgen -G "$NATIVE_CACHE/_native*.so" >/dev/null; then
    step "the native ops of csrc/ from the cache ($NATIVE_CACHE)"
    cp "$NATIVE_CACHE"/_native*.so gpicture/
    state=$(probe "${MODULES[@]}")
  fi
  if ! compgen -G "$NATIVE_CACHE/_native*.so" >/dev/null || grep -q "^missing gpicture._native$" <<<"$state"; then
    step "building the native ops of csrc/"
    PATH="$PWD/$VENV/bin:$PATH" "$PY" scripts/build_native.py
    state=$(probe "${MODULES[@]}")
    if ! grep -q "^missing gpicture._native$" <<<"$state"; then
      tmp=$(mktemp -d "$CACHE/.native.XXXXXX")
      cp gpicture/_native*.so "$tmp"/
      rm -rf "$NATIVE_CACHE"
      mv "$tmp" "$NATIVE_CACHE"
    fi
  fi
  echo "$NATIVE_KEY" > "$VENV/.native-hash"
fi

if grep -q "^missing" <<<"$state"; then
  echo "error: $VENV: these modules do not import after setup: $(grep "^missing" <<<"$state" | cut -d' ' -f2 | xargs)" >&2
  exit 2
fi
step "environment ready: $(grep "^ready" <<<"$state" | cut -d' ' -f2-)"
