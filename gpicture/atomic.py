"""Folders that appear complete or not at all.

Outputs are built under a temporary sibling (same file system, so the final move
is a rename) and moved into place only when complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def temp_sibling(out: Path) -> Path:
    """A new empty folder next to ``out`` (OSError if the parent cannot be written)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


def move_into_place(tmp: Path, out: Path) -> None:
    """Replace ``out`` (if any) by ``tmp``; the old one is removed only after the swap."""
    if out.exists():
        trash = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, trash)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)
