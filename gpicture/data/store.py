"""The Zarr voxel store: one dataset split as ragged arrays in CSR form.

The fields and their arrays are those of :data:`gpicture.data.schema.FIELDS` (the layout
is drawn in that module's docstring); the frame types and the reader here
follow that table (the writer: :mod:`gpicture.data.store_writer`).

Attributes: schema version, dataset, split, classes, point-cloud range, voxel size,
sweeps, feature names, the source fingerprint, ``labels`` (false: an unlabelled store,
without any label array), and ``complete`` (set last: a store without it was interrupted
and is refused), and ``integrity``: what the store must hold (every array's shape and chunk
count, :mod:`gpicture.data.integrity`), checked on open by a directory listing; every chunk
carries a CRC32C checked when it is read. Stores are written under a temporary name and moved
into place when complete.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpicture.data.chunks import ArrayPlace, RowReader, StoreError
from gpicture.data.finite import check_finite
from gpicture.data.integrity import StoreReport, check_chunks, check_present
from gpicture.data.schema import (
    FIELD,
    FIELDS,
    FRAME,
    ROW_LEVELS,
    SCHEMA_VERSION,
    Codec,
    Field,
    decode_strings,
    frame_type,
    level_fields,
)

if TYPE_CHECKING:  # annotations only: zarr is imported where a store is opened
    import zarr

FORMAT = "gpicture-voxel-store"
REMEDY = "the store is damaged or incompletely copied: `dvc pull` it again, or convert it again (`gpicture convert ... --force`)"
_TAMPERED = " (a tampered or old store: convert it again)"
_LAZY = tuple(f for f in FIELDS if f.lazy)
ROW_FIELDS = tuple(f for f in FIELDS if f.level is not FRAME)  # the fields stored per row (not per frame)
log = logging.getLogger(__name__)
_ROWS_NAME = {"point": "points", "voxel": "voxels", "box": "boxes", "occ": "occupancy rows"}


def _lazy(f: Field) -> property:
    """The property of a field read on first access, through the frame's ``<name>_reader``."""

    def get(self: Any) -> Any:
        read = getattr(self, f"{f.name}_reader")
        if read is None:
            return None
        cache = self.__dict__.setdefault("_lazy_values", {})
        if f.name not in cache:
            cache[f.name] = read()
        return cache[f.name]

    return property(get, doc=f"{f.doc}. None if the store has none; read on first access (most consumers skip it).")


StoreFrame = frame_type(
    "StoreFrame",
    "One frame read from a store (row ``index``). Points, boxes and velocities are in the points' frame "
    "(keyframe LiDAR frame for nuScenes, vehicle frame for Waymo), metres/radians.",
    tuple(f for f in FIELDS if not f.lazy),
    before=[("index", "int")],
    after=[(f"{f.name}_reader", "Callable[[], np.ndarray] | None", field(default=None, repr=False)) for f in _LAZY],
    namespace={f.name: _lazy(f) for f in _LAZY},
    module=__name__,
)

def _has_array(group: zarr.Group, path: str) -> bool:
    parent, _, leaf = path.rpartition("/")
    return parent in group and leaf in group[parent]


class VoxelStore:
    """Read-only access to a voxel store: ``len(store)``, ``store.frame_ids``, ``store[i]``."""

    def __init__(self, path: Path, group: zarr.Group, recorded: bool = True) -> None:
        self.path = Path(path)
        self._g = group
        self.recorded = recorded  # the store records its chunks: a missing chunk file is an error
        self.attrs: dict[str, Any] = dict(group.attrs)
        self.labelled = bool(self.attrs.get("labels", True))  # false: no label array (schema LABEL_FIELDS)
        self._ptr = {lv.ptr: self._whole(f"frames/{lv.ptr}_ptr") for lv in ROW_LEVELS}
        self._frame_values: dict[str, np.ndarray] = {}  # the frame table, read whole
        for f in level_fields(FRAME):
            values = self._whole(f.array)
            self._frame_values[f.name] = decode_strings(values) if f.codec is Codec.STRING else values
        self._ids = self._frame_values["frame_id"]
        self._poses = self._frame_values["pose"]
        self._index = {fid: i for i, fid in enumerate(self._ids)}
        self.feature_names: list[str] = list(self.attrs["feature_names"])
        self.box_classes = np.array(self.attrs["box_classes"], dtype=object)
        self._rows: dict[str, RowReader | None] = {  # the stored rows of each field; None: not in this store
            f.array: self._reader(f.array) if _has_array(group, f.array) else None
            for f in ROW_FIELDS if f.codec is not Codec.FEATURES
        }
        self._feats = {n: self._reader(f"{f.array}/{n}") for f in ROW_FIELDS if f.codec is Codec.FEATURES
                       for n in self.feature_names}
        self._read = {f.name: self._decoder(f) for f in ROW_FIELDS}
        self._seg = self._rows[FIELD["seg_labels"].array]  # raw rows, for queries over the whole split
        self._occ = self._rows[FIELD["occupancy"].array]

    def _reader(self, name: str) -> RowReader:
        return RowReader(self._g[name], ArrayPlace(self.path, name, REMEDY, self.recorded))

    def _whole(self, name: str) -> np.ndarray:
        """All rows of a (small, per-frame) array, through the checked reader."""
        try:
            arr = self._g[name]
        except KeyError:
            raise StoreError(f"{self.path}: array {name} is missing; {REMEDY}") from None
        return np.asarray(RowReader(arr, ArrayPlace(self.path, name, REMEDY, self.recorded))(0, arr.shape[0]))

    def _decoder(self, f: Field) -> Callable[[int, int], Any] | None:
        """Rows [a, b) of field ``f`` as the frame types hold them; None when the store lacks it."""
        if f.codec is Codec.FEATURES:
            return lambda a, b: {name: read(a, b) for name, read in self._feats.items()}
        read = self._rows[f.array]
        if read is None:
            return None
        match f.codec:
            case Codec.STRING:
                return lambda a, b: decode_strings(read(a, b))
            case Codec.CLASS:
                return lambda a, b: self.box_classes[read(a, b)]
        return read

    @classmethod
    def open(cls, path: str | Path, allow_empty: bool = False) -> VoxelStore:
        """Open a complete store read-only (StoreError naming the path otherwise).

        A store of no frame (every source frame skipped at convert) is refused with a message
        saying why, so that no stage caches, trains or evaluates on nothing; only the
        converter's own checks pass ``allow_empty``."""
        path = Path(path)
        if not (path / "zarr.json").exists():
            raise StoreError(f"{path}: not a voxel store (no zarr.json)")
        import zarr  # lazy: zarr only to open a store, not for the batch / model code importing this module

        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
        if attrs.get("format") != FORMAT:
            raise StoreError(f"{path}: not a gpicture voxel store")
        if attrs.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(f"{path}: schema version {attrs.get('schema_version')}, this code reads {SCHEMA_VERSION}")
        if not attrs.get("complete"):
            raise StoreError(f"{path}: incomplete store (an interrupted write); convert again")
        if not allow_empty and attrs.get("n_frames") == 0:
            skipped = attrs.get("skipped_frames", 0)
            raise StoreError(f"{path}: the store holds no frames ({skipped} of {attrs.get('frames_in_source', '?')} "
                             f"source frames were skipped at convert: {attrs.get('skipped_reason', 'no reason recorded')})"
                             "; nothing to cache, train or evaluate on")
        # Every recorded array and chunk file is there (a directory listing, no chunk read).
        recorded = check_present(path, attrs, REMEDY) is not None
        if not recorded:
            log.warning("%s: an old store that does not record its chunks: a lost chunk file would read as zeros "
                        "(convert it again to have it checked)", path)
        return cls(path, group, recorded)

    def verify(self) -> StoreReport:
        """Check everything: every chunk present and decoded (checksums included), every row
        array as long as its level's pointers and the attributes say, the pointers
        non-decreasing from 0. StoreError naming the first fault."""
        chunks = check_chunks(self.path, self.attrs, REMEDY)
        counts = {"frames": len(self)}
        for lv in ROW_LEVELS:
            ptr = self._ptr[lv.ptr]
            if len(ptr) != len(self) + 1 or ptr[0] != 0 or (np.diff(ptr) < 0).any():
                raise StoreError(f"{self.path}: frames/{lv.ptr}_ptr is not {len(self) + 1} non-decreasing pointers "
                                 f"from 0; {REMEDY}")
            total = int(ptr[-1])
            if lv.total and lv.total in self.attrs and int(self.attrs[lv.total]) != total:
                raise StoreError(f"{self.path}: attribute {lv.total} = {self.attrs[lv.total]}, but "
                                 f"frames/{lv.ptr}_ptr ends at {total}; {REMEDY}")
            for f in ROW_FIELDS:
                names = [f"{f.array}/{n}" for n in self.feature_names] if f.codec is Codec.FEATURES else [f.array]
                for name in names:
                    if f.level is lv and _has_array(self._g, name) and self._g[name].shape[0] != total:
                        raise StoreError(f"{self.path}: array {name} has {self._g[name].shape[0]} rows, "
                                         f"frames/{lv.ptr}_ptr says {total}; {REMEDY}")
            counts[_ROWS_NAME[lv.ptr]] = total
        for f in level_fields(FRAME):
            if self._g[f.array].shape[0] != len(self):
                raise StoreError(f"{self.path}: array {f.array} has {self._g[f.array].shape[0]} rows for "
                                 f"{len(self)} frames; {REMEDY}")
        if int(self.attrs.get("n_frames", len(self))) != len(self):
            raise StoreError(f"{self.path}: attribute n_frames = {self.attrs['n_frames']} for {len(self)} frames; {REMEDY}")
        return StoreReport(self.path, "voxel store", chunks, counts, recorded=self.recorded)

    def __len__(self) -> int:
        return len(self._ids)

    @functools.cached_property
    def fingerprint(self) -> str:
        """A digest of this store's identity and layout: its source, grid and every frame's
        point and voxel pointers. Derived stores (the teacher cache) record it."""
        h = hashlib.sha256()
        keys = ("dataset", "split", "source_fingerprint", "point_cloud_range", "voxel_size", "sweeps", "n_points", "n_voxels")
        h.update(json.dumps({k: self.attrs.get(k) for k in keys}, sort_keys=True).encode())
        for k in ("point", "voxel"):
            h.update(np.ascontiguousarray(self._ptr[k], dtype=np.int64).tobytes())
        h.update("\n".join(self._ids).encode())
        return h.hexdigest()

    def _field(self, name: str, i: int) -> Any:
        """Field ``name`` of frame i (rows through the level's pointers)."""
        ptr = self._ptr[FIELD[name].level.ptr]
        return self._read[name](ptr[i], ptr[i + 1])

    def frame_boxes(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(boxes (M, 7), names (M,), velocity (M, 2), num_points (M,)) of frame i, without
        reading its points (evaluation over a whole split touches only the box rows)."""
        if not self.labelled:
            raise StoreError(f"{self.path}: an unlabelled store (converted without labels) has no boxes")
        out = {n: self._field(n, i) for n in ("boxes", "box_names", "box_velocity", "box_num_points")}
        check_finite(f"{self.path}: frame {i} ({self._ids[i]})", out, StoreError, _TAMPERED)
        return tuple(out.values())

    def box_difficulty(self, i: int) -> np.ndarray:
        """(M,) int8 labelled detection difficulty of frame i's boxes (0 unknown, 1, 2)."""
        return self._field("box_difficulty", i)

    def pose(self, i: int) -> np.ndarray:
        """(4, 4) global_from_points of frame i."""
        check_finite(f"{self.path}: frame {i} ({self._ids[i]})", {"pose": self._poses[i]}, StoreError, _TAMPERED)
        return self._poses[i]

    def voxel_range(self, i: int) -> tuple[int, int]:
        """Rows [v0, v1) of frame i in the store's flat voxel arrays."""
        return int(self._ptr["voxel"][i]), int(self._ptr["voxel"][i + 1])

    @property
    def n_voxels(self) -> int:
        return int(self._ptr["voxel"][-1])

    @property
    def frame_ids(self) -> list[str]:
        return list(self._ids)

    @property
    def frame_scenes(self) -> list[str]:
        """The scene (nuScenes scene name, Waymo context) of every frame, in store order."""
        return list(self._frame_values["scene"])

    def index_of(self, frame_id: str) -> int:
        try:
            return self._index[frame_id]
        except KeyError:
            raise KeyError(f"{self.path}: no frame {frame_id!r}") from None

    def __getitem__(self, i: int) -> StoreFrame:
        return self.frame(i)

    def frame(self, i: int, labels: bool = True) -> StoreFrame:
        """Frame i; ``labels=False`` leaves every label field None without reading its rows
        (what pre-training and the teacher cache read: points, features, voxels, poses)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"{self.path}: frame index {i} out of range for {n} frames")
        i %= n
        values: dict[str, Any] = {}
        for f in level_fields(FRAME):
            v = self._frame_values[f.name][i]
            values[f.name] = v.item() if isinstance(v, np.generic) else v
        for f in ROW_FIELDS:
            read, ptr = self._read[f.name] if labels or not f.label else None, self._ptr[f.level.ptr]
            if f.lazy:
                values[f"{f.name}_reader"] = None if read is None else functools.partial(read, ptr[i], ptr[i + 1])
            else:
                values[f.name] = None if read is None else read(ptr[i], ptr[i + 1])
        # A NaN / inf never leaves the store (one np.isfinite per array; NaN box velocity = unknown).
        check_finite(f"{self.path}: frame {i} ({values['frame_id']})", values, StoreError, _TAMPERED)
        return StoreFrame(index=i, **values)
