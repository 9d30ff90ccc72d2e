"""Stores prove they are whole: what must exist is recorded when a store is written, checked when it is read.

A writer calls :func:`record_store` on its finished folder: for every array, its shape and
chunk grid (so its chunk count and keys), stored in the store's attributes under
:data:`RECORD_KEY` before ``complete`` is set. Every chunk is a file (the writers use
``chunks.WRITE_CONFIG``), and every chunk ends with a CRC32C (``chunks.compressors``), so:

- :func:`check_present` (on open, cheap: one directory listing per array, no chunk is read)
  finds a deleted array or chunk file, or an array whose metadata no longer matches;
- :func:`check_chunks` (``gpicture verify``: every byte) also reads and decodes every chunk,
  checking its checksum;
- a damaged chunk read later is the reader's error (``chunks.RowReader``).

Each fault is a :class:`~gpicture.data.chunks.StoreError` naming the store, the array, the chunk
and the remedy the caller gives (re-run the stage that wrote it, or ``dvc pull``). A store
written before the record existed has none: :func:`check_present` returns False and the caller
opens it with a warning.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpicture.data.chunks import (
    CHECKSUM,
    ArrayPlace,
    ChunkFiles,
    ChunkLayout,
    StoreError,
    decode_chunk,
)

RECORD_KEY = "integrity"  # the store attribute holding the record
RECORD_VERSION = 1


@dataclass(frozen=True)
class ArrayRecord:
    """What one array of a store must hold: ``shape`` rows, chunked by ``chunk_shape`` into
    ``chunks`` chunk files, every one of them present."""

    name: str
    shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    chunks: int


@dataclass(frozen=True)
class StoreRecord:
    """The record of a whole store (its attribute :data:`RECORD_KEY`)."""

    arrays: tuple[ArrayRecord, ...]
    checksum: str = CHECKSUM

    def to_attrs(self) -> dict[str, Any]:
        return {"version": RECORD_VERSION, "checksum": self.checksum,
                "arrays": {a.name: {"shape": list(a.shape), "chunk_shape": list(a.chunk_shape), "chunks": a.chunks}
                           for a in self.arrays}}

    @classmethod
    def from_attrs(cls, store: Path, attrs: dict[str, Any]) -> StoreRecord | None:
        """The record in a store's attributes; None for an old store without one (StoreError
        when it is there but unreadable: an edited store)."""
        rec = attrs.get(RECORD_KEY)
        if rec is None:
            return None
        try:
            arrays = tuple(ArrayRecord(str(name), tuple(int(n) for n in a["shape"]),
                                       tuple(int(n) for n in a["chunk_shape"]), int(a["chunks"]))
                           for name, a in sorted(rec["arrays"].items()))
            return cls(arrays, str(rec.get("checksum", CHECKSUM)))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise StoreError(f"{store}: its attribute {RECORD_KEY!r} (what the store must hold) is unreadable "
                             "(an edited store)") from None


@dataclass
class ChunkReport:
    """What :func:`check_chunks` read: arrays, chunk files and their bytes on disk."""

    arrays: int = 0
    chunks: int = 0
    bytes: int = 0
    checksummed: int = 0  # chunks whose CRC32C was checked
    names: list[str] = field(default_factory=list)


@dataclass
class StoreReport:
    """What ``gpicture verify`` checked of one store: its chunks, its row counts, and whether the
    store records what it must hold (False: an old store, a missing chunk cannot be told)."""

    path: Path
    kind: str  # "voxel store" / "teacher store"
    chunks: ChunkReport
    counts: dict[str, int]
    recorded: bool = True

    def lines(self) -> list[str]:
        """The report, for a person: what was checked, one line each."""
        c = self.chunks
        rows = ", ".join(f"{n:,} {name}" for name, n in self.counts.items())
        out = [f"{self.path}: a {self.kind}",
               (f"  {c.arrays} arrays, {c.chunks} chunk files ({c.bytes / 2**20:.2f} MiB) read and decoded, "
                f"{c.checksummed} CRC32C checksums matched"),
               f"  rows consistent with the pointers and attributes: {rows}"]
        if self.recorded:
            out.append(f"  every recorded chunk present ({RECORD_KEY} record): whole")
        else:
            out.append(f"  warning: an old store without the {RECORD_KEY} record: a lost chunk file cannot be told "
                       "from a chunk of fill values (write it again to have it checked)")
        return out


def _array_folders(folder: Path) -> list[str]:
    """Paths (``points/xyz``) of every Zarr array under a store folder, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel = Path(dirpath).relative_to(folder)
        if "zarr.json" in filenames and rel.parts:
            meta = json.loads((Path(dirpath) / "zarr.json").read_text())
            if meta.get("node_type") == "array":
                found.append(rel.as_posix())
                dirnames.clear()  # below an array: its chunk folders only
    return sorted(found)


def record_store(folder: Path) -> StoreRecord:
    """The record of the store being written at ``folder`` (every array it holds now)."""
    folder = Path(folder)
    arrays = []
    for name in _array_folders(folder):
        lay = ChunkLayout.of(folder / name)
        arrays.append(ArrayRecord(name, lay.shape, lay.chunk_shape, lay.n_chunks))
    return StoreRecord(tuple(arrays))


def _chunk_files(folder: Path) -> set[str]:
    """Every file under ``folder/c`` as a chunk key (``c/3/0``): one listing per chunk folder."""
    root = folder / "c"
    found: set[str] = set()
    for dirpath, _, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(folder).as_posix()
        found.update(f"{rel}/{f}" for f in filenames)
    return found


def _layout(place: ArrayPlace, rec: ArrayRecord) -> ChunkLayout:
    """The array's layout, StoreError unless its metadata is there and matches the record."""
    if not (place.folder / "zarr.json").is_file():
        raise StoreError(f"{place.store}: array {place.name} is missing (no {place.folder / 'zarr.json'}); "
                         f"{place.remedy}")
    try:
        lay = ChunkLayout.of(place.folder)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{place.store}: array {place.name}: unreadable metadata {place.folder / 'zarr.json'} "
                         f"({exc}); {place.remedy}") from None
    if lay.shape != rec.shape or lay.chunk_shape != rec.chunk_shape:
        raise StoreError(f"{place.store}: array {place.name} has shape {list(lay.shape)} in chunks of "
                         f"{list(lay.chunk_shape)}, the store recorded {list(rec.shape)} in chunks of "
                         f"{list(rec.chunk_shape)}; {place.remedy}")
    return lay


def check_present(store: Path, attrs: dict[str, Any], remedy: str) -> StoreRecord | None:
    """The store's record after checking, by directory listings only, that every recorded array
    and chunk file exists (StoreError naming the first one missing). None: an old store
    without a record, nothing checked."""
    store = Path(store)
    rec = StoreRecord.from_attrs(store, attrs)
    if rec is None:
        return None
    for a in rec.arrays:
        place = ArrayPlace(store, a.name, remedy)
        lay = _layout(place, a)
        have = _chunk_files(place.folder)
        for key in lay.chunk_keys():
            if key not in have:
                raise place.error(key, f"missing (no file {place.folder / key}; the store recorded "
                                       f"{a.chunks} chunk files for this array)")
    return rec


def check_chunks(store: Path, attrs: dict[str, Any], remedy: str) -> ChunkReport:
    """Read and decode every chunk of every recorded array (checksums included): StoreError
    naming the first missing or damaged one. For an old store without a record, the arrays
    found on disk are decoded as they are (a missing chunk cannot be told from fill values)."""
    store = Path(store)
    rec = check_present(store, attrs, remedy)
    if rec is None:
        rec = record_store(store)
        complete = False
    else:
        complete = True
    report = ChunkReport()
    for a in rec.arrays:
        place = ArrayPlace(store, a.name, remedy, complete)
        lay = _layout(place, a)
        report.arrays += 1
        report.names.append(a.name)
        if not lay.direct:
            _decode_through_zarr(place)
            continue
        out = np.empty(lay.chunk_shape, dtype=lay.dtype)
        files = ChunkFiles(place)
        for i in range(lay.n_chunks):
            key = lay.key(i)
            raw = files.read(key)
            if raw is None:
                if complete:  # listed a moment ago: removed while we read
                    raise place.error(key, f"missing (no file {place.folder / key})")
                continue
            decode_chunk(place, lay, key, raw, out)
            report.chunks += 1
            report.bytes += len(raw)
            report.checksummed += int(lay.checksum)
    return report


def _decode_through_zarr(place: ArrayPlace) -> None:
    """Read an array this project's direct reader does not handle through Zarr, naming it on failure."""
    import zarr  # lazy: only for arrays of another layout

    try:
        np.asarray(zarr.open_array(str(place.folder), mode="r")[...])
    except (RuntimeError, ValueError, OSError) as exc:
        raise StoreError(f"{place.store}: array {place.name} cannot be read ({exc}); {place.remedy}") from None
