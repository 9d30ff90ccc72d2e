"""Reading a teacher store (the cache :mod:`gpicture.teacher.cache` writes), checked whole.

Opening compares the store's integrity record with a directory listing (every recorded array
and chunk file present, no chunk read); each read checks its chunks' CRC32C; :meth:`verify`
reads everything. Rows are aligned with the source voxel store's canonical voxels.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gpicture.data.chunks import ArrayPlace, RowReader
from gpicture.data.integrity import StoreReport, check_chunks, check_present
from gpicture.data.store import StoreError, VoxelStore

if TYPE_CHECKING:  # annotations only: zarr is imported where a store is opened
    import zarr

log = logging.getLogger(__name__)
TEACHER_FORMAT = "gpicture-teacher-store"  # the store's format attribute, and its output kind (gpicture.atomic)
CHUNK = 1 << 15  # rows per chunk of the row arrays
REMEDY = ("the teacher store is damaged or incompletely copied: `dvc pull` it again, or recompute it "
          "(`gpicture teacher --force`)")


class TeacherStore:
    """Read access to a teacher cache, checked against its source store."""

    def __init__(self, path: Path, group: zarr.Group, recorded: bool = True) -> None:
        self.path = path
        self._g = group
        self.recorded = recorded  # the store records its chunks: a missing chunk file is an error
        self.attrs = dict(group.attrs)
        self.settings = self.attrs["settings"]
        self.dtype = self.settings["config"]["dtype"]
        names = ("frames/voxel_ptr", "features", "valid", *(("scale",) if self.dtype == "int8" else ()))
        self._read: dict[str, RowReader] = {}
        for n in names:
            try:
                arr = group[n]
            except KeyError:
                raise StoreError(f"{path}: array {n} is missing; {REMEDY}") from None
            self._read[n] = RowReader(arr, ArrayPlace(path, n, REMEDY, recorded))
        self._ptr = np.asarray(self._read["frames/voxel_ptr"](0, group["frames/voxel_ptr"].shape[0]))

    @classmethod
    def open(cls, path: str | Path, source: VoxelStore | None = None) -> TeacherStore:
        path = Path(path)
        if not (path / "zarr.json").exists():
            raise StoreError(f"{path}: not a teacher store (no zarr.json)")
        import zarr  # lazy: zarr only to open a cache (as _open_partial)

        g = zarr.open_group(str(path), mode="r")
        if g.attrs.get("format") != TEACHER_FORMAT:
            raise StoreError(f"{path}: not a gpicture teacher store")
        if not g.attrs.get("complete"):
            raise StoreError(f"{path}: incomplete teacher store (an interrupted run); run `gpicture teacher` again")
        # Every recorded array and chunk file is there (a directory listing, no chunk read).
        recorded = check_present(path, dict(g.attrs), REMEDY) is not None
        if not recorded:
            log.warning("%s: an old teacher store that does not record its chunks: a lost chunk file would read as "
                        "zeros (recompute it with `gpicture teacher --force` to have it checked)", path)
        store = cls(path, g, recorded)
        if source is not None and store.settings["source_store_fingerprint"] != source.fingerprint:
            raise StoreError(f"{path}: was computed from another source store than {source.path} "
                             "(fingerprints differ): recompute it")
        return store

    def __len__(self) -> int:
        return len(self._ptr) - 1

    def verify(self, source: VoxelStore | None = None) -> StoreReport:
        """Check everything: every chunk present and decoded (checksums included), and every row
        array as long as the voxel pointers and the recorded source say. StoreError naming the
        first fault."""
        chunks = check_chunks(self.path, self.attrs, REMEDY)
        ptr, n_vox = self._ptr, int(self.settings["source_n_voxels"])
        if len(ptr) != int(self.settings["source_n_frames"]) + 1 or ptr[0] != 0 or (np.diff(ptr) < 0).any():
            raise StoreError(f"{self.path}: frames/voxel_ptr is not {self.settings['source_n_frames'] + 1} "
                             f"non-decreasing pointers from 0; {REMEDY}")
        if int(ptr[-1]) != n_vox:
            raise StoreError(f"{self.path}: frames/voxel_ptr ends at {int(ptr[-1])}, the source had {n_vox} voxels; "
                             f"{REMEDY}")
        for name, read in self._read.items():
            if name != "frames/voxel_ptr" and read.arr.shape[0] != n_vox:
                raise StoreError(f"{self.path}: array {name} has {read.arr.shape[0]} rows for {n_vox} voxels; {REMEDY}")
        if source is not None and self.settings["source_store_fingerprint"] != source.fingerprint:
            raise StoreError(f"{self.path}: was computed from another source store than {source.path}: recompute it")
        return StoreReport(self.path, "teacher store", chunks, {"frames": len(self), "voxels": n_vox},
                           recorded=self.recorded)

    def _rows(self, v0: int, v1: int) -> np.ndarray:
        """Feature rows v0:v1 as float32 (int8 stores: times their per-row scale)."""
        f = np.asarray(self._read["features"](v0, v1)).astype(np.float32)
        if self.dtype == "int8":
            f *= np.asarray(self._read["scale"](v0, v1))[:, None]
        return f

    def frame(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(features (V_i, 64) float32, valid (V_i,) bool) of frame i, rows in the source's voxel order.
        StoreError naming the store when a row holds NaN / inf (the writer never stores such rows,
        so the store was damaged or edited): a NaN target would poison pre-training."""
        v0, v1 = int(self._ptr[i]), int(self._ptr[i + 1])
        f = self._rows(v0, v1)
        bad = ~np.isfinite(f).all(1)
        if bad.any():
            raise StoreError(f"{self.path}: frame {i} has {int(bad.sum())} of {len(f)} voxels with non-finite "
                             "(NaN / inf) teacher features (a damaged or edited store); recompute it with "
                             "`gpicture teacher --force`")
        return f, np.asarray(self._read["valid"](v0, v1))

    def valid_fraction(self) -> float:
        """Fraction of the voxels with a teacher feature that is present and finite (read in chunks)."""
        n = int(self._g["valid"].shape[0])
        good = 0
        for a in range(0, n, CHUNK):
            b = min(a + CHUNK, n)
            good += int((np.asarray(self._read["valid"](a, b)) & np.isfinite(self._rows(a, b)).all(1)).sum())
        return good / n if n else 0.0
