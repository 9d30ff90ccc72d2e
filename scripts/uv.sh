#!/usr/bin/env bash
# Prints the path of the pinned uv (used by scripts/setup.sh and `make lock`), installing it
# on first use from PyPI into a bootstrap venv of its own, $GPICTURE_UV_HOME (default
# ~/.cache/gpicture/uv-VERSION), shared by every checkout. A fresh machine needs only
# python3.11 and the registries. Set UV=/path/to/uv to use another uv of the same version.
set -euo pipefail
UV_VERSION=0.13.9
PYTHON=${PYTHON:-python3.11}
home=${GPICTURE_UV_HOME:-$HOME/.cache/gpicture/uv-$UV_VERSION}
uv=${UV:-$home/bin/uv}
is_pinned() { "$1" --version 2>/dev/null | grep -Eq "^uv $UV_VERSION( |$)"; }
if ! is_pinned "$uv"; then
  if [ -n "${UV:-}" ]; then
    echo "error: UV=$UV is not uv $UV_VERSION (scripts/uv.sh pins it)" >&2
    exit 2
  fi
  # Built beside its final place and moved there whole, so an interrupted install leaves nothing.
  mkdir -p "$(dirname "$home")"
  tmp=$(mktemp -d "$home.tmp.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  printf '\033[1m[setup]\033[0m %s\n' "installing uv $UV_VERSION into $home" >&2
  "$PYTHON" -m venv "$tmp"
  "$tmp/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION" >&2 \
    2> >(grep -v "^WARNING: Location" >&2)
  rm -rf "$home"
  mv "$tmp" "$home"
  is_pinned "$uv" || { echo "error: $uv: the uv just installed does not run" >&2; exit 2; }
fi
echo "$uv"
