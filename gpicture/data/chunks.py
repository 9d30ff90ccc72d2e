"""Store arrays as chunk files: how the writers encode them, how the readers read them back.

Every array of a voxel or teacher store is chunked along its first axis and encoded as
``bytes`` (little endian) -> Blosc/zstd -> CRC32C (:func:`compressors`): Zarr's own checksum
codec appends the CRC32C of the compressed chunk, so a damaged file is told from a good one
before it is decoded. Every chunk is written, fill values included (:data:`WRITE_CONFIG`), so
that a missing file always means a lost one. :class:`RowReader` reads a row range straight
from the chunk files; :func:`decode_chunk` decodes one chunk file and names it when it is
missing or damaged (:class:`StoreError`: the store, the array, the chunk and what to do).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # annotations only: zarr and numcodecs are imported where a store is read or written
    import numcodecs
    import zarr
    from zarr.abc.codec import BytesBytesCodec

CHECKSUM = "crc32c"  # the Zarr v3 codec name of the checksum every chunk ends with
WRITE_CONFIG = {"write_empty_chunks": True}  # Zarr array config: a chunk of fill values is a file too


class StoreError(ValueError):
    """A store that is missing, incomplete, damaged, or not a gpicture store (one line, naming it)."""


@dataclass(frozen=True)
class ArrayPlace:
    """Where one array's chunk files are, and what a reader says when one is missing or damaged.

    ``store`` is the store's folder, ``name`` the array's path inside it (``points/xyz``),
    ``remedy`` what the user should do (re-run the stage that wrote it, or ``dvc pull`` it),
    ``complete``: the store records that every chunk was written, so a missing chunk file is
    an error (old stores without that record: a missing chunk reads as the fill value)."""

    store: Path
    name: str
    remedy: str
    complete: bool = True

    @property
    def folder(self) -> Path:
        return self.store / self.name

    def error(self, key: str, problem: str) -> StoreError:
        """The one-line error of chunk ``key`` (``c/3/0``) of this array."""
        return StoreError(f"{self.store}: array {self.name}, chunk {key}: {problem}; {self.remedy}")


@dataclass(frozen=True)
class ChunkLayout:
    """The chunking of one array as its ``zarr.json`` declares it, and whether this module can
    read its chunk files directly (little-endian ``bytes`` + Blosc, optionally + CRC32C, default
    ``/`` chunk keys, chunked along the first axis only)."""

    shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    dtype: np.dtype
    fill: Any
    direct: bool
    checksum: bool

    @classmethod
    def of(cls, folder: Path) -> ChunkLayout:
        """The layout in ``folder/zarr.json`` (OSError / ValueError when it is unreadable)."""
        meta = json.loads((Path(folder) / "zarr.json").read_text())
        codecs = [c["name"] if isinstance(c, dict) else c for c in meta.get("codecs", [])]
        conf = [c.get("configuration", {}) if isinstance(c, dict) else {} for c in meta.get("codecs", [])]
        shape = tuple(int(n) for n in meta.get("shape", ()))
        chunk = tuple(int(n) for n in meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", ()))
        enc = meta.get("chunk_key_encoding", {})
        checksum = codecs[-1:] == [CHECKSUM]
        body = codecs[:-1] if checksum else codecs
        direct = (body == ["bytes", "blosc"] and conf[0].get("endian", "little") == "little"
                  and enc.get("name") == "default" and enc.get("configuration", {}).get("separator", "/") == "/"
                  and len(chunk) == len(shape) and chunk[1:] == shape[1:])
        dtype = np.dtype(meta["data_type"]) if isinstance(meta.get("data_type"), str) else np.dtype("V1")
        return cls(shape, chunk, dtype.newbyteorder("<"), meta.get("fill_value", 0), direct, checksum)

    @property
    def n_chunks(self) -> int:
        """Chunks on the regular grid (0 for an array of no rows)."""
        return math.prod(-(-s // c) for s, c in zip(self.shape, self.chunk_shape, strict=True)) if self.shape else 1

    def chunk_keys(self) -> list[str]:
        """Every chunk key on the grid (``c/i/j/...``), in order."""
        if not self.shape:
            return ["c"]
        ranges = [range(-(-s // c)) for s, c in zip(self.shape, self.chunk_shape, strict=True)]
        return ["c/" + "/".join(map(str, idx)) for idx in itertools.product(*ranges)]

    def key(self, i: int) -> str:
        """The key of chunk ``i`` along the first axis (the only chunked axis of a direct array)."""
        return "/".join(["c", str(i), *["0"] * (len(self.shape) - 1)])


class ChunkFiles:
    """Reads the chunk files of one array into one reused buffer (no fresh pages per chunk)."""

    def __init__(self, place: ArrayPlace) -> None:
        self.place = place
        self._raw = bytearray(0)

    def read(self, key: str) -> memoryview | None:
        """The raw bytes of chunk ``key`` (valid until the next read), None if the file is absent."""
        try:
            f = open(self.place.folder / key, "rb", buffering=0)  # noqa: SIM115
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self.place.error(key, f"cannot be read ({exc.strerror or exc})") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            if len(self._raw) < size:
                self._raw = bytearray(size)
            n = f.readinto(self._raw)
        return memoryview(self._raw)[:n]


def decode_chunk(place: ArrayPlace, layout: ChunkLayout, key: str, raw: memoryview, out: np.ndarray) -> None:
    """Decode the chunk file bytes ``raw`` of a direct array into ``out`` (a full chunk of rows).

    With a checksum, the last 4 bytes are the CRC32C (little endian) of the rest, as Zarr's
    ``crc32c`` codec writes and checks them; a mismatch or a Blosc failure is the array's
    StoreError naming the chunk, never a codec traceback."""
    if layout.checksum:
        if len(raw) < 4:
            raise place.error(key, f"damaged ({len(raw)} bytes, shorter than its checksum)")
        body, stored = raw[:-4], int.from_bytes(raw[-4:], "little")
        if _crc32c(body) != stored:
            raise place.error(key, "damaged (its CRC32C checksum does not match its bytes)")
        raw = body
    try:
        _blosc().decode(raw, out=out)
    except (RuntimeError, ValueError, TypeError) as exc:  # numcodecs' "error during blosc decompression: -1"
        raise place.error(key, f"damaged (Blosc cannot decode it: {exc})") from None


class RowReader:
    """Rows [a, b) of one store array, read straight from its chunk files.

    Zarr's general machinery costs about a millisecond per read, more than decoding a
    frame's chunks; a frame touches a dozen arrays. For arrays this module wrote (local
    files, chunked along the first axis only, ``bytes`` + Blosc [+ CRC32C] codecs) the chunk
    files are read, checked and Blosc-decoded directly. Anything else falls back to Zarr
    (its errors are turned into the array's StoreError too). A missing chunk file is an error
    when ``place.complete`` (the store records every chunk), else rows of the fill value.
    """

    def __init__(self, arr: zarr.Array, place: ArrayPlace) -> None:
        self.arr = arr
        self.place = place
        try:
            self.layout: ChunkLayout | None = ChunkLayout.of(place.folder)
        except (OSError, ValueError, KeyError, TypeError):
            self.layout = None
        self.fast = self.layout is not None and self.layout.direct and list(self.layout.shape[1:]) == list(arr.shape[1:])
        self._files = ChunkFiles(place)
        if self.fast:
            self.rows_per_chunk = int(self.layout.chunk_shape[0])
            self.chunk_shape = self.layout.chunk_shape
            self.dtype = np.dtype(arr.dtype).newbyteorder("<")

    def _decode_into(self, i: int, out: np.ndarray) -> None:
        key = self.layout.key(i)
        raw = self._files.read(key)
        if raw is None:
            if self.place.complete:
                raise self.place.error(key, f"missing (no file {self.place.folder / key})")
            out[...] = self.layout.fill  # an old store: a chunk of fill values was never written
            return
        decode_chunk(self.place, self.layout, key, raw, out)

    def __call__(self, a: int, b: int) -> np.ndarray:
        a, b = int(a), int(b)
        if not self.fast:
            try:
                return np.asarray(self.arr[a:b])
            except (RuntimeError, ValueError, OSError) as exc:
                raise self.place.error(f"of rows {a}:{b}", f"damaged ({exc})") from None
        if b <= a:
            return np.zeros((0, *self.chunk_shape[1:]), dtype=self.dtype)
        rows = self.rows_per_chunk
        c0, c1 = a // rows, (b - 1) // rows
        # Decode the few chunks a frame spans straight into one buffer; return a view of it.
        buf = np.empty(((c1 - c0 + 1) * rows, *self.chunk_shape[1:]), dtype=self.dtype)
        for k, c in enumerate(range(c0, c1 + 1)):
            self._decode_into(c, buf[k * rows : (k + 1) * rows])
        return buf[a - c0 * rows : b - c0 * rows]


@functools.cache
def _blosc() -> numcodecs.Blosc:
    """The decoder of every chunk (it reads the codec from each chunk's header)."""
    import numcodecs  # lazy: numcodecs only to read a store's chunks, not to import this module

    return numcodecs.Blosc()


def _crc32c(data: memoryview) -> int:
    """CRC32C of ``data``: the implementation Zarr's ``crc32c`` codec uses (given, as Zarr gives
    it, a uint8 array: google-crc32c refuses a writable memoryview, not a numpy view of it)."""
    return int(_crc32c_impl()(np.frombuffer(data, np.uint8)))


@functools.cache
def _crc32c_impl() -> Callable[[np.ndarray], int]:
    """google-crc32c (what zarr 3.1's codec computes with), else the ``crc32c`` package (zarr 3.0's)."""
    try:
        import google_crc32c  # lazy: only to read a chunk
    except ImportError:  # pragma: no cover  (the lock installs google-crc32c)
        from crc32c import crc32c

        return crc32c
    return google_crc32c.value


def settle_writes(timeout: float = 120.0) -> None:
    """Wait until Zarr's background I/O has no task left (call before removing a temporary store).

    Zarr runs a write as concurrent chunk tasks on its own event loop thread; when one fails
    (a full disk), the error reaches the caller at once while the other tasks go on writing,
    and a chunk write recreates its parent folders. Removing the temporary store before they
    finish would leave a fresh ``.<name>.tmp-*`` behind: this waits for every task first."""
    import asyncio
    import sys

    sync = sys.modules.get("zarr.core.sync")  # not imported: Zarr never ran, nothing to wait for
    loop = getattr(sync, "loop", [None])[0] if sync is not None else None
    if loop is None or loop.is_closed() or not loop.is_running():
        return
    try:
        if asyncio.get_running_loop() is loop:  # pragma: no cover  (called from Zarr's own loop)
            return
    except RuntimeError:
        pass

    async def drain() -> None:
        me = asyncio.current_task()
        while pending := [t for t in asyncio.all_tasks() if t is not me and not t.done()]:
            await asyncio.wait(pending)

    asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout)


def compressors() -> tuple[BytesBytesCodec, ...]:
    """The bytes -> bytes codecs of every store array: Blosc/zstd level 3, byte shuffle,
    then Zarr's CRC32C checksum of the compressed chunk."""
    from zarr.codecs import BloscCodec, Crc32cCodec  # lazy: zarr only to write a store

    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), Crc32cCodec()
