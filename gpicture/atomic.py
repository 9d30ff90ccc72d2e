"""Folders that appear complete or not at all.

Outputs are built under a temporary sibling (same file system, so the final move
is a rename) and moved into place only when complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def into_place(tmp: Path, out: Path) -> Iterator[Path]:
    """``with into_place(temp_sibling(out), out) as tmp:`` build in ``tmp``; when the block
    completes, ``tmp`` replaces ``out`` (``move_into_place``); when it raises (an interrupt
    too), ``tmp`` is removed and ``out`` is left as it was."""
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    move_into_place(tmp, out)


def write_file_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder renamed into
    place: readers see the old file or the whole new one, never a partial write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
