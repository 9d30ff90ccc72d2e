"""Semantic-occupancy ground truth on a chosen grid, built from a voxel store.

Rows follow nuScenes-Occupancy (OpenOccupancy): ``(K, 4)`` integers ``z, y, x, label`` of the
occupied voxels, label 1..C (the dataset's classes; 0 is "empty" and never appears in a row).
:data:`~gpicture.data.spec.OCCUPANCY_IGNORE` (255) marks voxels known to be occupied by something unlabelled: they are
skipped by the loss and the metrics.

- nuScenes: the store's occupancy rows on the 0.2 m OpenOccupancy grid are downsampled to the
  run's grid (an integer factor per axis, same range). A coarse voxel takes the most frequent
  label among its occupied fine voxels whose label is 1..16 (ties: the smallest label, so the
  result is deterministic); one whose fine voxels are all "noise" (label 0) is OCCUPANCY_IGNORE; one
  without occupied fine voxels is empty. The majority vote keeps thin classes (poles, cones) from
  vanishing the way a "max label" or "any object wins" rule would bias them in.
- Waymo (no occupancy files), and a nuScenes store without occupancy rows (no nuScenes-Occupancy
  folder beside the raw data; its lidarseg labels mapped to the 16 evaluation classes): the voxels
  of the grid that contain labelled points (seg labels 1..C) take their points' majority label;
  voxels whose points are all UNDEFINED (0) are OCCUPANCY_IGNORE; points without labels (255) are
  dropped. Only frames with segmentation labels have ground truth (Waymo: every 5th frame in the
  real data; nuScenes: the keyframe points, not the sweeps).

Everything is vectorized with ``np.unique`` / ``np.lexsort`` over rows: no Python loop over
points or voxels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpicture.data.spec import (
    NUSCENES,
    OCCUPANCY_IGNORE,
    UNLABELLED,
    DatasetSpec,
    OccupancyTruth,
    dataset_spec,
)
from gpicture.data.store import StoreFrame, VoxelStore
from gpicture.data.voxelize import VoxelGrid

EMPTY = 0


@dataclass(frozen=True)
class OccupancyGridSpec:
    """An axis-aligned occupancy grid in the points' frame (keyframe LiDAR frame for nuScenes,
    vehicle frame for Waymo): ``point_cloud_range`` x0, y0, z0, x1, y1, z1 (m) and the voxel
    size (m) per axis x, y, z."""

    point_cloud_range: tuple[float, float, float, float, float, float]
    voxel_size: tuple[float, float, float]

    def __post_init__(self) -> None:
        r, v = self.point_cloud_range, self.voxel_size
        try:
            VoxelGrid(r, v).validate()
        except ValueError as exc:
            raise ValueError(f"occupancy grid: {exc}") from None
        extent = np.asarray(r[3:]) - np.asarray(r[:3])
        n = extent / np.asarray(v)
        if not np.allclose(n, np.round(n), atol=1e-6):
            raise ValueError(f"occupancy grid: voxel size {list(v)} does not divide the range {list(r)}")

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> OccupancyGridSpec:
        """From ``{point_cloud_range: [6 floats], voxel_size: float | [3 floats]}``."""
        vs = p["voxel_size"]
        vs = (vs, vs, vs) if isinstance(vs, int | float) else vs
        return cls(tuple(float(x) for x in p["point_cloud_range"]), tuple(float(x) for x in vs))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, list[float]]:
        return {"point_cloud_range": list(self.point_cloud_range), "voxel_size": list(self.voxel_size)}

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """(nz, ny, nx) voxels."""
        lo, hi = np.asarray(self.point_cloud_range[:3]), np.asarray(self.point_cloud_range[3:])
        nx, ny, nz = np.round((hi - lo) / np.asarray(self.voxel_size)).astype(int)
        return int(nz), int(ny), int(nx)

    def factor_from(self, fine: OccupancyGridSpec) -> tuple[int, int, int]:
        """Integer (fz, fy, fx) such that this grid's voxel = f fine voxels per axis; ValueError
        if the ranges differ or a ratio is not an integer."""
        if not np.allclose(self.point_cloud_range, fine.point_cloud_range, atol=1e-6):
            raise ValueError(f"occupancy grid range {list(self.point_cloud_range)} differs from the source grid's "
                             f"{list(fine.point_cloud_range)}")
        ratio = np.asarray(self.voxel_size)[::-1] / np.asarray(fine.voxel_size)[::-1]
        if not np.allclose(ratio, np.round(ratio), atol=1e-6) or (np.round(ratio) < 1).any():
            raise ValueError(f"occupancy voxel size {list(self.voxel_size)} is not an integer multiple of the "
                             f"source grid's {list(fine.voxel_size)}")
        fz, fy, fx = (int(x) for x in np.round(ratio))
        return fz, fy, fx


# nuScenes-Occupancy's grid: [-51.2, -51.2, -5, 51.2, 51.2, 3] m at 0.2 m, 512 x 512 x 40.
OPENOCCUPANCY_GRID = OccupancyGridSpec((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.2, 0.2, 0.2))


@functools.cache
def _occupancy_classes() -> int:
    return len(NUSCENES.occupancy_classes(list(NUSCENES.raw_classes)))  # 16


def read_openoccupancy_rows(path: Path) -> np.ndarray:
    """The (K, 4) int16 rows z, y, x, label of a nuScenes-Occupancy ``.npy`` file (what the nuScenes
    reader stores), checked: a file numpy cannot read, another shape, non-integral or non-finite
    values, cells off the 512 x 512 x 40 grid or labels outside 0..16 (and OCCUPANCY_IGNORE) are a
    ValueError naming the file, before they could poison the occupancy targets."""
    try:
        occ = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable occupancy .npy file ({exc})") from None
    if not isinstance(occ, np.ndarray) or occ.ndim != 2 or occ.shape[1] != 4:
        shape = occ.shape if isinstance(occ, np.ndarray) else type(occ).__name__
        raise ValueError(f"{path}: occupancy of shape {shape}, expected (K, 4) z, y, x, label")
    if occ.dtype.kind not in "iuf" or (occ.dtype.kind == "f" and not (np.isfinite(occ).all()
                                                                     and (occ == np.round(occ)).all())):
        raise ValueError(f"{path}: occupancy rows must be finite integers (dtype {occ.dtype})")
    limits = np.array([*OPENOCCUPANCY_GRID.shape_zyx], dtype=np.int64)
    cells = occ[:, :3].astype(np.int64)
    off = ((cells < 0) | (cells >= limits)).any(axis=1)
    label = occ[:, 3].astype(np.int64)
    bad_label = ((label < 0) | (label > _occupancy_classes())) & (label != OCCUPANCY_IGNORE)
    if off.any() or bad_label.any():
        what = (f"cell {cells[off][0].tolist()} off the {tuple(limits.tolist())} grid" if off.any()
                else f"label {int(label[bad_label][0])} outside 0..{_occupancy_classes()} (and {OCCUPANCY_IGNORE})")
        raise ValueError(f"{path}: occupancy row with {what}; {int((off | bad_label).sum())} bad rows")
    return occ.astype(np.int16, copy=False)


def majority_rows(cells: np.ndarray, labels: np.ndarray, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """Votes ``labels`` (n,) cast into flat ``cells`` (n,) -> rows (K, 4) int16 z, y, x, label, one
    per voxel with a vote, sorted by flat index. The label is the most frequent vote >= 1 (ties: the
    smallest); a voxel whose votes are all 0 gets OCCUPANCY_IGNORE."""
    cells = np.asarray(cells, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(cells) == 0:
        return np.zeros((0, 4), dtype=np.int16)
    # Count every (cell, label) pair; label 0 counts as -1 votes-worth of priority (never wins
    # against a real label) by sorting it last within its cell.
    pair, counts = np.unique(cells * 256 + labels, return_counts=True)
    cell, lab = pair // 256, pair % 256
    real = lab > 0
    # Within each cell: real labels first, then the largest count, then the smallest label.
    order = np.lexsort((lab, -counts, ~real, cell))
    cell, lab, real = cell[order], lab[order], real[order]
    first = np.ones(len(cell), dtype=bool)
    first[1:] = cell[1:] != cell[:-1]
    cell, lab = cell[first], np.where(real[first], lab[first], OCCUPANCY_IGNORE)
    _, ny, nx = shape_zyx
    z, rem = np.divmod(cell, ny * nx)
    y, x = np.divmod(rem, nx)
    return np.column_stack([z, y, x, lab]).astype(np.int16)


def downsample_rows(rows: np.ndarray, fine: OccupancyGridSpec, coarse: OccupancyGridSpec) -> np.ndarray:
    """nuScenes-Occupancy rows (K, 4) z, y, x, label on ``fine`` -> rows on ``coarse`` (same range,
    integer voxel ratio) by the majority rule of the module docstring. Rows outside ``fine`` are a
    ValueError (a file of another grid)."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != 4:
        raise ValueError(f"occupancy rows of shape {rows.shape}, expected (K, 4) z, y, x, label")
    fz, fy, fx = coarse.factor_from(fine)
    zyx = rows[:, :3].astype(np.int64)
    if len(rows) and ((zyx < 0).any() or (zyx >= np.asarray(fine.shape_zyx)).any()):
        raise ValueError(f"occupancy rows outside the {fine.shape_zyx} (z, y, x) grid they claim")
    nz, ny, nx = coarse.shape_zyx
    c = zyx // np.array([fz, fy, fx])
    cells = (c[:, 0] * ny + c[:, 1]) * nx + c[:, 2]
    labels = rows[:, 3].astype(np.int64)
    if len(labels) and ((labels < 0) | (labels > 254)).any():
        raise ValueError(f"occupancy labels outside 0..254: {np.unique(labels[(labels < 0) | (labels > 254)])[:5]}")
    return majority_rows(cells, labels, (nz, ny, nx))


def point_rows(points: np.ndarray, labels: np.ndarray, grid: OccupancyGridSpec) -> np.ndarray:
    """Labelled points (N, 3) m with labels (N,) (1..C, 0 undefined, 255 none) -> rows (K, 4) on
    ``grid``: voxels holding points labelled 0..C, majority label (all-0 voxels OCCUPANCY_IGNORE)."""
    lo = np.asarray(grid.point_cloud_range[:3], dtype=np.float64)
    nz, ny, nx = grid.shape_zyx
    ijk = np.floor((np.asarray(points, dtype=np.float64) - lo) / np.asarray(grid.voxel_size)).astype(np.int64)
    labels = np.asarray(labels).astype(np.int64)
    ok = (labels != UNLABELLED) & (ijk >= 0).all(1) & (ijk[:, 0] < nx) & (ijk[:, 1] < ny) & (ijk[:, 2] < nz)
    ijk, labels = ijk[ok], labels[ok]
    return majority_rows((ijk[:, 2] * ny + ijk[:, 1]) * nx + ijk[:, 0], labels, (nz, ny, nx))


def dense_target(rows: np.ndarray, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """Rows (K, 4) -> (nz, ny, nx) uint8 labels (0 empty, OCCUPANCY_IGNORE kept)."""
    out = np.zeros(shape_zyx, dtype=np.uint8)
    r = np.asarray(rows, dtype=np.int64)
    out[r[:, 0], r[:, 1], r[:, 2]] = r[:, 3]
    return out


def dense_to_rows(labels: np.ndarray) -> np.ndarray:
    """(nz, ny, nx) labels -> rows (K, 4) int16 of the non-empty voxels (nuScenes-Occupancy format)."""
    zyx = np.argwhere(labels != EMPTY)
    return np.column_stack([zyx, labels[zyx[:, 0], zyx[:, 1], zyx[:, 2]]]).astype(np.int16)


def store_truth(spec: DatasetSpec, attrs: dict[str, Any]) -> OccupancyTruth:
    """Where a store's occupancy ground truth comes from: the dataset's occupancy rows where the
    store holds them (nuScenes converted with a nuScenes-Occupancy folder), else its labelled
    points (Waymo; a nuScenes split without that folder, such as real data with lidarseg only)."""
    if spec.occupancy_truth is OccupancyTruth.OCCUPANCY_ROWS and attrs.get("has_occupancy"):
        return OccupancyTruth.OCCUPANCY_ROWS
    return OccupancyTruth.POINT_LABELS


def frame_truth(frame: StoreFrame, spec: DatasetSpec) -> OccupancyTruth:
    """:func:`store_truth` of the store ``frame`` was read from (without reading its rows)."""
    if spec.occupancy_truth is OccupancyTruth.OCCUPANCY_ROWS and frame.occupancy_reader is not None:
        return OccupancyTruth.OCCUPANCY_ROWS
    return OccupancyTruth.POINT_LABELS


@functools.lru_cache(maxsize=None)
def _point_label_lut(spec: DatasetSpec) -> np.ndarray:
    """Stored point label -> occupancy label (1..K, 0 undefined), UNLABELLED kept: nuScenes' raw
    lidarseg classes go to the 16 evaluation classes (noise -> 0), Waymo's stay as they are."""
    _, lut = spec.segmentation_eval_classes(list(spec.raw_classes))
    lut = lut.copy()
    lut[UNLABELLED] = UNLABELLED
    return lut


def frame_ground_truth(frame: StoreFrame, spec: DatasetSpec, grid: OccupancyGridSpec) -> np.ndarray | None:
    """Ground-truth rows of a store frame on ``grid`` (from the source :func:`frame_truth` names);
    None where it has none (no occupancy rows, or no labelled point)."""
    if frame_truth(frame, spec) is OccupancyTruth.OCCUPANCY_ROWS:
        occ = frame.occupancy
        if occ is None or len(occ) == 0:
            return None
        return downsample_rows(occ, OPENOCCUPANCY_GRID, grid)
    seg = frame.seg_labels
    if seg is None or not (seg != UNLABELLED).any():
        return None
    return point_rows(frame.points, _point_label_lut(spec)[seg], grid)


def frames_with_ground_truth(store: VoxelStore) -> list[int]:
    """Indices of the frames of ``store`` that have occupancy ground truth (see :func:`frame_ground_truth`).

    Reads only the occupancy pointers (nuScenes) or the per-point label rows (Waymo), not whole
    frames, through the store's CSR pointers.
    """
    # The store exposes no per-frame "has labels" query yet: its CSR pointers and label reader are used.
    ptr = store._ptr
    if store_truth(dataset_spec(store.attrs["dataset"]), store.attrs) is OccupancyTruth.OCCUPANCY_ROWS:
        if store._occ is None:
            return []
        return np.flatnonzero(np.diff(ptr["occ"]) > 0).tolist()
    if store._seg is None:
        return []
    p = ptr["point"]
    return [i for i in range(len(store)) if (store._seg(p[i], p[i + 1]) != UNLABELLED).any()]
