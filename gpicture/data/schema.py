"""The voxel store's schema, declared once: every field a frame carries, where it is stored.

A frame's data is a set of *fields*, each on one *level*: per point, per voxel, per box,
per occupancy row, or once per frame. A store holds the rows of a level for all frames
in one flat array per field (CSR form: ``frames/<level>_ptr`` gives each frame's rows);
the frame-level fields are arrays of one row per frame. :data:`FIELDS` lists them all;
the store's writer and reader, the frame types (``RawFrame``, ``EncodedFrame``,
``StoreFrame``, built by :func:`frame_type`) and the converter loop over it. Adding a
per-point field is one line here plus the reader code that fills it.

Layout (a Zarr v3 group; every array chunked along its first axis, Blosc/zstd)::

    frames/{point_ptr, voxel_ptr, box_ptr, occ_ptr}   int64 (F + 1,)  CSR pointers
    frames/{id, scene}                                  uint8 (F, 64)   UTF-8, zero padded
    frames/timestamp int64 (F,)    frames/pose float64 (F, 4, 4) global_from_points
    points/xyz float32 (N, 3)      points/feat/<name> float32 (N,)   points/voxel int32 (N,)
    points/seg uint8 (N,)          (only when the split has labels; 255 = unlabelled)
    voxels/coords int32 (V, 3)     z, y, x on the canonical grid
    boxes/box float32 (M, 7)       x, y, z, l, w, h, yaw      boxes/velocity float32 (M, 2)
    boxes/class int16 (M,)         index into attrs["box_classes"]
    boxes/num_points int32 (M,)    boxes/id uint8 (M, 64)     boxes/difficulty int8 (M,)
    occupancy/rows int16 (K, 4)    z, y, x, label (only when the source has occupancy)

The ``label`` fields (point labels, boxes, occupancy) are what a person annotated. An
*unlabelled* store (attrs ``labels: false``, e.g. the ``pretrain`` split) has none of their
arrays: its converter never reads them from the source, and its frames hold None there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from gpicture.data.spec import UNLABELLED

SCHEMA_VERSION = 1
STR_WIDTH = 64  # bytes of a stored string (UTF-8, zero padded)

# Integer-valued features are stored (and read back) in the smallest exact dtype.
FEATURE_DTYPES = {"ring": "uint8", "return_index": "uint8", "laser": "uint8", "nlz": "int8"}


@dataclass(frozen=True)
class Level:
    """What a field's rows are: ``ptr`` names the level's CSR pointer array (``frames/<ptr>_ptr``);
    ``chunk`` is the row count of a chunk; ``total`` the store attribute counting all its rows."""

    ptr: str | None
    chunk: int
    total: str | None = None


POINT = Level("point", 1 << 17, "n_points")
VOXEL = Level("voxel", 1 << 17, "n_voxels")
BOX = Level("box", 1 << 14, "n_boxes")
OCC = Level("occ", 1 << 18)
FRAME = Level(None, 1 << 12)  # one row per frame; written with the frame table at commit
ROW_LEVELS = (POINT, VOXEL, BOX, OCC)


class Codec(Enum):
    """How a field's values become a stored array."""

    NUMBER = "number"  # as they are, cast to the field's dtype
    STRING = "string"  # str values as (n, STR_WIDTH) uint8 rows (encode_strings)
    CLASS = "class"  # box class names as their index into attrs["box_classes"]
    FEATURES = "features"  # a dict name -> values: one array per feature, under "<array>/<name>"


@dataclass(frozen=True)
class Field:
    """One field of a frame: its attribute ``name`` on the frame types, its ``array`` in the store.

    The first field of each row level counts the level's rows in a frame (a missing optional
    one: none). An ``optional`` field may be None in a frame; its array is created when the
    first frame with values arrives, and frames without any get ``fill`` rows (the store
    attribute ``present`` tells whether the array exists). ``derived`` fields are computed
    when a frame is encoded (the voxelization), not by the dataset readers. ``lazy``: read
    on first access (``StoreFrame.occupancy``).
    """

    name: str
    array: str
    level: Level
    dtype: str
    shape: tuple[int, ...] = ()  # per row
    optional: bool = False
    codec: Codec = Codec.NUMBER
    doc: str = ""
    fill: int = 0
    present: str | None = None
    derived: bool = False
    lazy: bool = False
    label: bool = False  # annotated by a person: absent from an unlabelled store

    @property
    def annotation(self) -> str:
        """The field's type on the frame dataclasses."""
        if self.level is FRAME and not self.shape:
            base = "str" if self.codec is Codec.STRING else "int"
        else:
            base = "dict[str, np.ndarray]" if self.codec is Codec.FEATURES else "np.ndarray"
        return f"{base} | None" if self.optional else base

    def stored_dtype(self, feature: str | None = None) -> np.dtype:
        """The dtype of the stored array (of one feature, for the FEATURES field)."""
        if self.codec is Codec.STRING:
            return np.dtype(np.uint8)
        return np.dtype(FEATURE_DTYPES.get(feature, self.dtype) if feature else self.dtype)

    @property
    def stored_shape(self) -> tuple[int, ...]:
        """The per-row shape of the stored array."""
        return (STR_WIDTH,) if self.codec is Codec.STRING else self.shape


FIELDS: tuple[Field, ...] = (
    # once per frame
    Field("frame_id", "frames/id", FRAME, "str", codec=Codec.STRING,
          doc="nuScenes: the keyframe's sample token; Waymo: '<context name>/<timestamp_us>'"),
    Field("scene", "frames/scene", FRAME, "str", codec=Codec.STRING, doc="nuScenes scene name / Waymo context name"),
    Field("timestamp_us", "frames/timestamp", FRAME, "int64"),
    Field("pose", "frames/pose", FRAME, "float64", (4, 4), doc="(4, 4) float64 global_from_points"),
    # per point
    Field("points", "points/xyz", POINT, "float32", (3,), doc="(N, 3) float32 x, y, z"),
    Field("features", "points/feat", POINT, "float32", codec=Codec.FEATURES,
          doc="name -> (N,): float32, or the integer dtype of FEATURE_DTYPES"),
    Field("point_voxel", "points/voxel", POINT, "int32", derived=True,
          doc="(N,) int32 index into voxel_coords, -1 outside the range"),
    Field("seg_labels", "points/seg", POINT, "uint8", optional=True, fill=UNLABELLED, present="has_seg_labels",
          label=True, doc="(N,) uint8 raw dataset classes, 255 = unlabelled; None: no labels in this frame"),
    # per voxel
    Field("voxel_coords", "voxels/coords", VOXEL, "int32", (3,), derived=True, doc="(V, 3) int32 z, y, x"),
    # per box
    Field("boxes", "boxes/box", BOX, "float32", (7,), label=True, doc="(M, 7) float32 x, y, z, l, w, h, yaw"),
    Field("box_names", "boxes/class", BOX, "int16", codec=Codec.CLASS,
          label=True, doc="(M,) str raw category names ('vehicle.car', 'TYPE_VEHICLE', ...)"),
    Field("box_velocity", "boxes/velocity", BOX, "float32", (2,), label=True,
          doc="(M, 2) float32 vx, vy (NaN where unknown)"),
    Field("box_num_points", "boxes/num_points", BOX, "int32", label=True,
          doc="(M,) int32 lidar points in the box, as the source states"),
    Field("box_ids", "boxes/id", BOX, "str", codec=Codec.STRING, label=True,
          doc="(M,) str instance / track id, stable over a scene"),
    Field("box_difficulty", "boxes/difficulty", BOX, "int8", label=True,
          doc="(M,) int8 Waymo detection difficulty (1, 2); 0 where not given"),
    # per occupancy row
    Field("occupancy", "occupancy/rows", OCC, "int16", (4,), optional=True, present="has_occupancy", lazy=True,
          label=True, doc="(K, 4) int16 rows z, y, x, label (OpenOccupancy grid); None: absent"),
)
FIELD = {f.name: f for f in FIELDS}
LABEL_FIELDS = tuple(f for f in FIELDS if f.label)


def level_fields(level: Level) -> tuple[Field, ...]:
    """The fields of one level, in table order (the first counts the level's rows)."""
    return tuple(f for f in FIELDS if f.level is level)


def rows(frame: Any, level: Level) -> int:
    """Rows of ``level`` in a frame: the length of the level's first field (0 when it is None)."""
    value = getattr(frame, level_fields(level)[0].name)
    return 0 if value is None else len(value)


def frame_type(name: str, doc: str, fields: tuple[Field, ...], before: list | None = None, after: list | None = None,
               namespace: dict[str, Any] | None = None, module: str | None = None) -> type:
    """A dataclass with one attribute per field of ``fields`` (optional ones default to None),
    after the ``before`` and followed by the ``after`` dataclass fields (make_dataclass triples)."""
    required = [(f.name, f.annotation) for f in fields if not f.optional]
    optional = [(f.name, f.annotation, dataclasses.field(default=None)) for f in fields if f.optional]
    lines = [f"    {f.name}: {f.doc or f.annotation}" for f in fields]
    cls = dataclasses.make_dataclass(name, [*(before or []), *required, *optional, *(after or [])],
                                     namespace={**(namespace or {}), "__doc__": doc + "\n\nFields:\n" + "\n".join(lines)})
    cls.__module__ = module or __name__  # picklable (frames travel from worker processes) and documented there
    return cls


def encode_strings(values, width: int = STR_WIDTH) -> np.ndarray:
    """Strings as a (n, width) uint8 array (UTF-8, zero padded): a stable Zarr dtype."""
    out = np.zeros((len(values), width), dtype=np.uint8)
    for i, v in enumerate(values):
        b = str(v).encode()
        if len(b) > width:
            raise ValueError(f"string longer than {width} bytes: {v!r}")
        out[i, : len(b)] = np.frombuffer(b, dtype=np.uint8)
    return out


def decode_strings(arr: np.ndarray) -> np.ndarray:
    """The (n,) object array of str of ``encode_strings`` rows."""
    return np.array([bytes(row).rstrip(b"\0").decode() for row in arr], dtype=object)
