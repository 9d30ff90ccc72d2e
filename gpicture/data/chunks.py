"""Store arrays as chunk files: how the writer compresses them, how the reader reads rows back.

Every array of a voxel store is chunked along its first axis and compressed with Blosc/zstd
(:func:`compressor`). :class:`RowReader` reads a row range straight from the chunk files.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: zarr and numcodecs are imported where a store is read or written
    import numcodecs
    import zarr
    from zarr.codecs import BloscCodec


class RowReader:
    """Rows [a, b) of one store array, read straight from its chunk files.

    Zarr's general machinery costs about a millisecond per read, more than decoding a
    frame's chunks; a frame touches a dozen arrays. For arrays this module wrote (local
    files, chunked along the first axis only, ``bytes`` + Blosc codecs) the chunk files
    are read and Blosc-decoded directly. Anything else falls back to Zarr.
    """

    def __init__(self, arr: zarr.Array, folder: Path) -> None:
        self.arr = arr
        self.folder = folder
        meta = json.loads((folder / "zarr.json").read_text()) if (folder / "zarr.json").exists() else {}
        codecs = meta.get("codecs", [])
        chunk = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", [])
        enc = meta.get("chunk_key_encoding", {})
        self.fast = (
            len(codecs) == 2 and codecs[0]["name"] == "bytes"
            and codecs[0].get("configuration", {}).get("endian", "little") == "little"
            and codecs[1]["name"] == "blosc" and enc.get("name") == "default"
            and enc.get("configuration", {}).get("separator", "/") == "/"
            and list(chunk[1:]) == list(arr.shape[1:])
        )
        self._raw = bytearray(0)
        if self.fast:
            self.rows_per_chunk = int(chunk[0])
            self.chunk_shape = tuple(chunk)
            self.dtype = np.dtype(arr.dtype).newbyteorder("<")
            self.suffix = "/".join(["0"] * (len(chunk) - 1))
            self.fill = meta.get("fill_value", 0)

    def _decode_into(self, i: int, out: np.ndarray) -> None:
        name = f"c/{i}/{self.suffix}" if self.suffix else f"c/{i}"
        try:
            f = open(self.folder / name, "rb", buffering=0)  # noqa: SIM115
        except FileNotFoundError:  # never written: all fill value
            out[...] = self.fill
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            if len(self._raw) < size:  # one reused read buffer: no fresh pages per chunk
                self._raw = bytearray(size)
            n = f.readinto(self._raw)
        _blosc().decode(memoryview(self._raw)[:n], out=out)

    def __call__(self, a: int, b: int) -> np.ndarray:
        a, b = int(a), int(b)
        if not self.fast:
            return np.asarray(self.arr[a:b])
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


def compressor() -> BloscCodec:
    """The codec of every store array: Blosc/zstd level 3, byte shuffle."""
    from zarr.codecs import BloscCodec  # lazy: zarr only to write a store

    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
