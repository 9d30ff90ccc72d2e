"""Outputs that appear complete or not at all, have one writer, and are replaced only if ours.

- Outputs are built under a temporary sibling (same file system, so the final move is a
  rename) and moved into place only when complete (:func:`into_place`, :func:`move_into_place`).
- A writer first *claims* its output (:func:`claim_output`): an exclusive ``fcntl`` lock on
  ``.<name>.lock`` beside it, so a second writer of the same path fails at once with a message
  instead of corrupting the first one's work. The kernel releases the lock when the process ends,
  a crash included; the final move checks that the claim still holds.
- Claiming an output removes the temporaries that a killed earlier run left beside it
  (``.<name>.tmp-*``, ``.<name>.old-*``: only the names this module makes, and only while
  holding the lock, so no live writer owns them), with a log line.
- Every folder output says what kind it is: a Zarr store by its ``format`` attribute, any
  other folder by a marker (``.gpicture-output``, JSON ``{"kind": ...}``) written just before it
  is moved into place. ``--force`` replaces an existing output only if it is of the same kind
  (:func:`check_replaceable`); anything else is refused with a message naming it: nothing is
  deleted that this project did not write.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

MARK = ".gpicture-output"
_log = logging.getLogger(__name__)


class OutputError(OSError):
    """An output that cannot be written: busy (another writer), in the way, or lost its claim."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0])


def lock_path(out: Path) -> Path:
    """The lock file of output ``out`` (beside it, so it never becomes part of the output)."""
    out = Path(out)
    return out.with_name(f".{out.name}.lock")


class OutputLock:
    """An exclusive claim on an output path (``fcntl.flock`` on :func:`lock_path`).

    The lock file is removed on release. A waiter that opened the old file before it was
    removed finds, after locking, that the path now names another file (or none) and retries,
    so two processes never both hold a claim on one output.
    """

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = lock_path(self.out)
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        with signals_deferred():  # an interrupt half-way would leave the lock file and its descriptor
            return self._acquire()

    def _acquire(self) -> OutputLock:
        for _ in range(100):
            try:
                self.out.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"{self.out}: cannot write there ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputError(f"{self.out}: another process (pid {holder}) is writing it (lock "
                                      f"{self.path}); wait for it to finish or stop it") from None
                raise OutputError(f"{self.path}: cannot lock ({exc.strerror or exc})") from None
            if self._same_file(fd):
                try:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                except OSError as exc:  # a full disk: the lock we hold is ours to remove
                    self.path.unlink(missing_ok=True)
                    os.close(fd)
                    raise OutputError(f"{self.out}: cannot write there ({exc.strerror or exc}, writing "
                                      f"{self.path})") from None
                self._fd = fd
                return self
            os.close(fd)  # the holder released and removed it between our open and our lock: again
        raise OutputError(f"{self.path}: could not be locked (it keeps being replaced)")

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def owns(self) -> bool:
        """Whether this process still holds the claim (the lock file is the one it locked)."""
        return self._fd is not None and self._same_file(self._fd)

    def check(self) -> None:
        """OutputError unless the claim still holds (before the final move into place)."""
        if not self.owns():
            raise OutputError(f"{self.out}: lost its lock {self.path} (removed or replaced by someone else); "
                              "not moving the output into place")

    def release(self) -> None:
        if self._fd is None:
            return
        with signals_deferred():
            if self.owns():
                self.path.unlink(missing_ok=True)
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def output_kind(path: Path) -> str | None:
    """The kind of output this project wrote at ``path`` (its marker; or a Zarr group's
    ``format`` attribute), None for anything else."""
    path = Path(path)
    for meta, read in ((path / MARK, lambda d: d.get("kind")),
                       (path / "zarr.json", lambda d: (d.get("attributes") or {}).get("format"))):
        if meta.is_file():
            try:
                kind = read(json.loads(meta.read_text()))
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(kind, str):
                return kind
    return None


def mark_output(folder: Path, kind: str) -> None:
    """Write the marker that says ``folder`` is a ``kind`` output of this project."""
    write_file_atomic(Path(folder) / MARK, json.dumps({"kind": kind, "writer": "gpicture"}) + "\n")


def check_replaceable(out: Path, kind: str) -> None:
    """OutputError unless ``out`` is absent or an output of ``kind`` this project wrote."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    found = output_kind(out) if out.is_dir() and not out.is_symlink() else None
    if found != kind:
        what = f"a {found}" if found else ("not a folder" if not out.is_dir() else f"no {MARK} marker")
        raise OutputError(f"{out}: not a {kind} written by gpicture ({what}); --force replaces only those, "
                          "so move or remove it yourself")


def remove_stale_temporaries(out: Path, log: Callable[[str], None] = _log.warning) -> list[Path]:
    """Remove the temporaries a killed run left beside ``out`` (call while holding its lock)."""
    out = Path(out)
    stale = sorted(p for pattern in (f".{out.name}.tmp-*", f".{out.name}.old-*") for p in out.parent.glob(pattern))
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        log(f"removed {p}, left by an interrupted run")
    return stale


@contextmanager
def claim_output(out: Path, kind: str, force: bool = False, exist_ok: bool = False,
                 log: Callable[[str], None] = _log.warning) -> Iterator[OutputLock]:
    """Hold the exclusive claim on ``out`` for the block.

    On entry: lock (OutputError at once if another process holds it), remove stale
    temporaries, and if ``out`` exists: with ``exist_ok`` (an output that resumes, e.g. a
    training folder) go on; with ``force`` check it is a ``kind`` this project wrote; else
    refuse (use --force).
    """
    lock = OutputLock(out).acquire()
    try:
        remove_stale_temporaries(out, log)
        if (Path(out).exists() or Path(out).is_symlink()) and not exist_ok:
            if not force:
                raise OutputError(f"{out}: output exists (use --force to replace it)")
            check_replaceable(out, kind)
        yield lock
    finally:
        lock.release()


def temp_sibling(out: Path) -> Path:
    """A new empty folder next to ``out`` (OSError if the parent cannot be written)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


def move_into_place(tmp: Path, out: Path, kind: str | None = None, lock: OutputLock | None = None) -> None:
    """Replace ``out`` (if any) by ``tmp``; the old one is removed only after the swap.

    ``kind`` marks the folder as this project's output of that kind first; ``lock``, the
    claim on ``out``, must still hold (else OutputError and ``tmp`` is left to the caller)."""
    tmp, out = Path(tmp), Path(out)
    if kind is not None:
        mark_output(tmp, kind)
    if lock is not None:
        lock.check()
    if not (out.exists() or out.is_symlink()):
        os.replace(tmp, out)
        return
    trash = out.with_name(f".{out.name}.old-{os.getpid()}")
    with signals_deferred():  # a Ctrl-C between the two renames would leave no output at all
        os.replace(out, trash)
        os.replace(tmp, out)
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT / SIGTERM wait until the block is done (main thread; elsewhere a no-op).

    For steps an interrupt must not split: the two renames of a replacement, and writes that
    Zarr hands to its background I/O thread (interrupted while waiting for them, the main
    thread would remove a temporary folder that the I/O thread then writes into again)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def into_place(tmp: Path, out: Path, kind: str | None = None, lock: OutputLock | None = None) -> Iterator[Path]:
    """``with into_place(temp_sibling(out), out) as tmp:`` build in ``tmp``; when the block
    completes, ``tmp`` replaces ``out`` (:func:`move_into_place` with ``kind`` and ``lock``);
    when it raises (an interrupt too), ``tmp`` is removed and ``out`` is left as it was."""
    try:
        yield tmp
        move_into_place(tmp, out, kind, lock)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
