"""The Zarr voxel store: one dataset split as ragged arrays in CSR form.

Layout (a Zarr v3 group; every array chunked along its first axis, Blosc/zstd):

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

Attributes: schema version, dataset, split, classes, point-cloud range, voxel size,
sweeps, feature names, the source fingerprint, and ``complete`` (set last: a store
without it was interrupted and is refused). Stores are written under a temporary
name and moved into place when complete.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec

from gpicture.atomic import move_into_place, temp_sibling

SCHEMA_VERSION = 1
STR_WIDTH = 64
POINT_CHUNK = 1 << 17
VOXEL_CHUNK = 1 << 17
BOX_CHUNK = 1 << 14
FRAME_CHUNK = 1 << 12
OCC_CHUNK = 1 << 18


# Integer-valued features are stored (and read back) in the smallest exact dtype.
FEATURE_DTYPES = {"ring": "uint8", "return_index": "uint8", "laser": "uint8", "nlz": "int8"}


class StoreError(ValueError):
    """A store that is missing, incomplete, or not a gpicture voxel store."""


class _RowReader:
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
        _BLOSC.decode(memoryview(self._raw)[:n], out=out)

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


_BLOSC = numcodecs.Blosc()  # decoding reads the codec from each chunk's header


def _compressor() -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def encode_strings(values, width: int = STR_WIDTH) -> np.ndarray:  # noqa: ANN001
    """Strings as a (n, width) uint8 array (UTF-8, zero padded): a stable Zarr dtype."""
    out = np.zeros((len(values), width), dtype=np.uint8)
    for i, v in enumerate(values):
        b = str(v).encode()
        if len(b) > width:
            raise ValueError(f"string longer than {width} bytes: {v!r}")
        out[i, : len(b)] = np.frombuffer(b, dtype=np.uint8)
    return out


def decode_strings(arr: np.ndarray) -> np.ndarray:
    return np.array([bytes(row).rstrip(b"\0").decode() for row in arr], dtype=object)


@dataclass
class StoreFrame:
    """One frame read from a store. Points, boxes and velocities are in the points'
    frame (keyframe LiDAR frame for nuScenes, vehicle frame for Waymo), metres/radians."""

    index: int
    frame_id: str
    scene: str
    timestamp_us: int
    pose: np.ndarray  # (4, 4) float64 global_from_points
    points: np.ndarray  # (N, 3) float32
    features: dict[str, np.ndarray]  # name -> (N,): float32, or the integer dtype of FEATURE_DTYPES
    seg_labels: np.ndarray | None  # (N,) uint8, 255 = unlabelled
    boxes: np.ndarray  # (M, 7) float32 x, y, z, l, w, h, yaw
    box_names: np.ndarray  # (M,) str
    box_velocity: np.ndarray  # (M, 2) float32
    box_num_points: np.ndarray  # (M,) int32
    box_ids: np.ndarray  # (M,) str
    box_difficulty: np.ndarray  # (M,) int8
    voxel_coords: np.ndarray  # (V, 3) int32 z, y, x
    point_voxel: np.ndarray  # (N,) int32 index into voxel_coords, -1 outside the range
    occupancy_reader: Callable[[], np.ndarray] | None = field(default=None, repr=False)

    @property
    def occupancy(self) -> np.ndarray | None:
        """(K, 4) int16 rows z, y, x, label on the OpenOccupancy grid; None if the store has
        none. Read on first access (it is large and most consumers skip it)."""
        if self.occupancy_reader is None:
            return None
        if not hasattr(self, "_occupancy"):
            self._occupancy = self.occupancy_reader()
        return self._occupancy


class VoxelStore:
    """Read-only access to a voxel store: ``len(store)``, ``store.frame_ids``, ``store[i]``."""

    def __init__(self, path: Path, group: zarr.Group) -> None:
        self.path = Path(path)
        self._g = group
        self.attrs: dict[str, Any] = dict(group.attrs)
        fr = group["frames"]
        self._ptr = {k: np.asarray(fr[f"{k}_ptr"][:]) for k in ("point", "voxel", "box", "occ")}
        self._ids = decode_strings(fr["id"][:])
        self._scenes = decode_strings(fr["scene"][:])
        self._timestamps = np.asarray(fr["timestamp"][:])
        self._poses = np.asarray(fr["pose"][:])
        self._index = {fid: i for i, fid in enumerate(self._ids)}
        self.feature_names: list[str] = list(self.attrs["feature_names"])
        self.box_classes = np.array(self.attrs["box_classes"], dtype=object)
        names = {
            "xyz": "points/xyz", "voxel": "points/voxel", "coords": "voxels/coords", "box": "boxes/box",
            "velocity": "boxes/velocity", "class": "boxes/class", "num_points": "boxes/num_points",
            "id": "boxes/id", "difficulty": "boxes/difficulty",
        }
        self._arrays = {k: self._reader(v) for k, v in names.items()}
        self._feats = {n: self._reader(f"points/feat/{n}") for n in self.feature_names}
        self._seg = self._reader("points/seg") if "seg" in group["points"] else None
        self._occ = self._reader("occupancy/rows") if "occupancy" in group else None

    def _reader(self, name: str) -> _RowReader:
        return _RowReader(self._g[name], self.path / name)

    @classmethod
    def open(cls, path: str | Path) -> VoxelStore:
        """Open a complete store read-only (StoreError naming the path otherwise)."""
        path = Path(path)
        if not (path / "zarr.json").exists():
            raise StoreError(f"{path}: not a voxel store (no zarr.json)")
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
        if attrs.get("format") != "gpicture-voxel-store":
            raise StoreError(f"{path}: not a gpicture voxel store")
        if attrs.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(f"{path}: schema version {attrs.get('schema_version')}, this code reads {SCHEMA_VERSION}")
        if not attrs.get("complete"):
            raise StoreError(f"{path}: incomplete store (an interrupted write); convert again")
        return cls(path, group)

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

    def frame_boxes(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(boxes (M, 7), names (M,), velocity (M, 2), num_points (M,)) of frame i, without
        reading its points (evaluation over a whole split touches only the box rows)."""
        b0, b1 = self._ptr["box"][i : i + 2]
        a = self._arrays
        return a["box"](b0, b1), self.box_classes[a["class"](b0, b1)], a["velocity"](b0, b1), a["num_points"](b0, b1)

    def box_difficulty(self, i: int) -> np.ndarray:
        """(M,) int8 labelled detection difficulty of frame i's boxes (0 unknown, 1, 2)."""
        b0, b1 = self._ptr["box"][i : i + 2]
        return self._arrays["difficulty"](b0, b1)

    def pose(self, i: int) -> np.ndarray:
        """(4, 4) global_from_points of frame i."""
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

    def index_of(self, frame_id: str) -> int:
        try:
            return self._index[frame_id]
        except KeyError:
            raise KeyError(f"{self.path}: no frame {frame_id!r}") from None

    def __getitem__(self, i: int) -> StoreFrame:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"{self.path}: frame index {i} out of range for {n} frames")
        i %= n
        p0, p1 = self._ptr["point"][i : i + 2]
        v0, v1 = self._ptr["voxel"][i : i + 2]
        b0, b1 = self._ptr["box"][i : i + 2]
        a = self._arrays
        occ = None
        if self._occ is not None:
            o0, o1 = self._ptr["occ"][i : i + 2]
            occ = functools.partial(self._occ, o0, o1)
        return StoreFrame(
            index=i,
            frame_id=str(self._ids[i]),
            scene=str(self._scenes[i]),
            timestamp_us=int(self._timestamps[i]),
            pose=self._poses[i],
            points=a["xyz"](p0, p1),
            features={name: read(p0, p1) for name, read in self._feats.items()},
            seg_labels=None if self._seg is None else self._seg(p0, p1),
            boxes=a["box"](b0, b1),
            box_names=self.box_classes[a["class"](b0, b1)],
            box_velocity=a["velocity"](b0, b1),
            box_num_points=a["num_points"](b0, b1),
            box_ids=decode_strings(a["id"](b0, b1)),
            box_difficulty=a["difficulty"](b0, b1),
            voxel_coords=a["coords"](v0, v1),
            point_voxel=a["voxel"](p0, p1),
            occupancy_reader=occ,
        )


@dataclass
class EncodedFrame:
    """A frame ready to append: a reader's RawFrame plus its voxelization."""

    frame_id: str
    scene: str
    timestamp_us: int
    pose: np.ndarray
    points: np.ndarray
    features: dict[str, np.ndarray]
    seg_labels: np.ndarray | None
    voxel_coords: np.ndarray
    point_voxel: np.ndarray
    boxes: np.ndarray
    box_names: np.ndarray
    box_velocity: np.ndarray
    box_num_points: np.ndarray
    box_ids: np.ndarray
    box_difficulty: np.ndarray
    occupancy: np.ndarray | None
    dropped_nonfinite: int = 0


class StoreWriter:
    """Appends frames to a new store under a temporary folder; ``commit`` moves it into place.

    Use as a context manager: on an exception the temporary folder is removed and
    nothing appears at the destination.
    """

    def __init__(self, out: Path, attrs: dict[str, Any], feature_names: list[str], box_classes: list[str],
                 force: bool = False, flush_points: int = 1 << 21) -> None:
        self.out = Path(out)
        if self.out.exists() and not force:
            raise StoreError(f"{self.out}: output exists (use --force to replace it)")
        try:
            self.tmp = temp_sibling(self.out)
        except OSError as exc:
            raise StoreError(f"{self.out}: cannot write there ({exc.strerror or exc})") from exc
        self.force = force
        self.attrs = dict(attrs)
        self.feature_names = list(feature_names)
        # Labels and occupancy arrays are created when the first frame that has them arrives
        # (earlier frames are back-filled), so a split without any has none.
        self.has_seg = self.has_occ = False
        self.box_classes = list(box_classes)
        self._class_index = {c: i for i, c in enumerate(self.box_classes)}
        self.flush_points = flush_points
        self._buf: list[EncodedFrame] = []
        self._buf_points = 0
        self._counts = {"point": [0], "voxel": [0], "box": [0], "occ": [0]}
        self._meta: dict[str, list] = {"id": [], "scene": [], "timestamp": [], "pose": []}
        self.dropped_nonfinite = 0
        g = zarr.open_group(str(self.tmp), mode="w")
        self._g = g

        def arr(name: str, shape_tail: tuple[int, ...], dtype: str, chunk: int) -> zarr.Array:
            return g.create_array(name, shape=(0, *shape_tail), chunks=(chunk, *shape_tail), dtype=dtype,
                                  compressors=_compressor())

        self._new_array = arr

        self._a = {
            "xyz": arr("points/xyz", (3,), "float32", POINT_CHUNK),
            "voxel": arr("points/voxel", (), "int32", POINT_CHUNK),
            "coords": arr("voxels/coords", (3,), "int32", VOXEL_CHUNK),
            "box": arr("boxes/box", (7,), "float32", BOX_CHUNK),
            "velocity": arr("boxes/velocity", (2,), "float32", BOX_CHUNK),
            "class": arr("boxes/class", (), "int16", BOX_CHUNK),
            "num_points": arr("boxes/num_points", (), "int32", BOX_CHUNK),
            "id": arr("boxes/id", (STR_WIDTH,), "uint8", BOX_CHUNK),
            "difficulty": arr("boxes/difficulty", (), "int8", BOX_CHUNK),
        }
        for name in self.feature_names:
            self._a[f"feat/{name}"] = arr(f"points/feat/{name}", (), FEATURE_DTYPES.get(name, "float32"), POINT_CHUNK)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def append(self, frame: EncodedFrame) -> None:
        if sorted(frame.features) != sorted(self.feature_names):
            raise StoreError(f"frame {frame.frame_id}: features {sorted(frame.features)}, "
                             f"the store has {sorted(self.feature_names)}")
        self._buf.append(frame)
        self._buf_points += len(frame.points)
        self.dropped_nonfinite += frame.dropped_nonfinite
        if self._buf_points >= self.flush_points:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        fs = self._buf
        cat = np.concatenate
        a = self._a
        a["xyz"].append(cat([f.points for f in fs]).astype(np.float32))
        a["voxel"].append(cat([f.point_voxel for f in fs]).astype(np.int32))
        a["coords"].append(cat([f.voxel_coords.reshape(-1, 3) for f in fs]).astype(np.int32))
        a["box"].append(cat([f.boxes.reshape(-1, 7) for f in fs]).astype(np.float32))
        a["velocity"].append(cat([f.box_velocity.reshape(-1, 2) for f in fs]).astype(np.float32))
        names = cat([np.asarray(f.box_names, dtype=object) for f in fs]) if fs else []
        unknown = sorted({n for n in names if n not in self._class_index})
        if unknown:
            raise StoreError(f"box classes {unknown} are not in the store's class list")
        a["class"].append(np.array([self._class_index[n] for n in names], dtype=np.int16))
        a["num_points"].append(cat([f.box_num_points for f in fs]).astype(np.int32))
        a["id"].append(encode_strings(cat([np.asarray(f.box_ids, dtype=object) for f in fs])))
        a["difficulty"].append(cat([f.box_difficulty for f in fs]).astype(np.int8))
        for name in self.feature_names:
            values = cat([f.features[name] for f in fs])
            dtype = np.dtype(FEATURE_DTYPES.get(name, "float32"))
            stored = values.astype(dtype)
            if dtype.kind in "iu" and not np.array_equal(stored, values):
                raise StoreError(f"feature {name!r} has values that do not fit {dtype} exactly")
            a[f"feat/{name}"].append(stored)
        if not self.has_seg and any(f.seg_labels is not None for f in fs):
            self.has_seg = True
            a["seg"] = self._new_array("points/seg", (), "uint8", POINT_CHUNK)
            a["seg"].append(np.full(sum(self._counts["point"]), 255, np.uint8))
        if not self.has_occ and any(f.occupancy is not None for f in fs):
            self.has_occ = True
            a["occ"] = self._new_array("occupancy/rows", (4,), "int16", OCC_CHUNK)
        if self.has_seg:
            a["seg"].append(cat([
                f.seg_labels if f.seg_labels is not None else np.full(len(f.points), 255, np.uint8) for f in fs
            ]).astype(np.uint8))
        if self.has_occ:
            a["occ"].append(cat([
                f.occupancy if f.occupancy is not None else np.zeros((0, 4), np.int16) for f in fs
            ]).astype(np.int16))
        for f in fs:
            self._counts["point"].append(len(f.points))
            self._counts["voxel"].append(len(f.voxel_coords))
            self._counts["box"].append(len(f.boxes))
            self._counts["occ"].append(0 if f.occupancy is None else len(f.occupancy))
            self._meta["id"].append(f.frame_id)
            self._meta["scene"].append(f.scene)
            self._meta["timestamp"].append(f.timestamp_us)
            self._meta["pose"].append(f.pose)
        self._buf, self._buf_points = [], 0

    def commit(self) -> Path:
        """Write the frame table and attributes, mark the store complete, move it into place."""
        self._flush()
        g = self._g
        n = len(self._meta["id"])
        if n == 0:
            raise StoreError(f"{self.out}: no frames to write")

        def small(name: str, data: np.ndarray) -> None:
            g.create_array(name, data=data, chunks=(FRAME_CHUNK, *data.shape[1:]), compressors=_compressor())

        for k, counts in self._counts.items():
            small(f"frames/{k}_ptr", np.cumsum(counts).astype(np.int64))
        small("frames/id", encode_strings(self._meta["id"]))
        small("frames/scene", encode_strings(self._meta["scene"]))
        small("frames/timestamp", np.asarray(self._meta["timestamp"], dtype=np.int64))
        small("frames/pose", np.asarray(self._meta["pose"], dtype=np.float64).reshape(n, 4, 4))
        attrs = {
            **self.attrs,
            "format": "gpicture-voxel-store",
            "schema_version": SCHEMA_VERSION,
            "feature_names": self.feature_names,
            "box_classes": self.box_classes,
            "has_seg_labels": self.has_seg,
            "has_occupancy": self.has_occ,
            "n_frames": n,
            "n_points": int(sum(self._counts["point"])),
            "n_voxels": int(sum(self._counts["voxel"])),
            "n_boxes": int(sum(self._counts["box"])),
            "dropped_nonfinite_points": int(self.dropped_nonfinite),
        }
        json.dumps(attrs)  # fail here, not half-way, on a non-JSON attribute
        g.attrs.update(attrs)
        g.attrs["complete"] = True
        move_into_place(self.tmp, self.out)
        return self.out
