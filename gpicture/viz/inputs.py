"""What a picture of one frame is made of, loaded and checked before anything is drawn.

- the frame, chosen by id or by index;
- its teacher features, from a teacher store that must have been computed from this store
  (same fingerprint);
- its I²Mask, computed exactly as pre-training does for (seed, epoch, frame);
- predictions: detection boxes (a nuScenes submission JSON in global coordinates, brought back
  to the keyframe LiDAR frame with the frame's pose; a Waymo ``metrics_pb2.Objects`` file in
  the vehicle frame, the store's frame) or occupancy (a predictions folder of ``.npy`` rows and
  ``meta.json``). A file that does not describe this store's frames is refused with one
  ValueError naming it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gpicture.data.occupancy_targets import OccupancyGridSpec
from gpicture.data.spec import DetectionFormat, dataset_spec
from gpicture.data.store import StoreFrame, VoxelStore
from gpicture.eval.occupancy import META, read_meta, read_rows
from gpicture.teacher.cache import TeacherStore

if TYPE_CHECKING:  # torch is imported only by the views that need it (mask): workers start faster
    from gpicture.training.pretrain import MaskConfig


def resolve_frame(store: VoxelStore, frame: str | int) -> int:
    """A frame given by id (exact) or by index (an integer, negative from the end) -> index.
    ValueError naming the store otherwise."""
    ids = store.frame_ids
    if isinstance(frame, str) and frame in set(ids):
        return store.index_of(frame)
    try:
        i = int(frame)
    except (TypeError, ValueError):
        raise ValueError(f"{store.path}: no frame {frame!r} (give a frame id, e.g. {ids[0]!r}, "
                         f"or an index 0..{len(ids) - 1})") from None
    if not -len(ids) <= i < len(ids):
        raise ValueError(f"{store.path}: frame index {i} out of range for {len(ids)} frames")
    return i % len(ids)


def open_teacher(path: Path, store: VoxelStore) -> TeacherStore:
    """The teacher store at ``path``, refused (StoreError, a ValueError) unless computed from ``store``."""
    return TeacherStore.open(Path(path), source=store)


@dataclass
class FrameMask:
    """The I²Mask of one frame's voxels (V voxels, K clusters)."""

    mask: np.ndarray  # (V,) bool, True = masked
    cluster: np.ndarray  # (V,) int64 cluster id, -1 for voxels without a teacher target
    n_clusters: int

    def cluster_ratios(self) -> tuple[np.ndarray, np.ndarray]:
        """(masked fraction (K,) float, voxels (K,) int) of each cluster; NaN for an empty one."""
        c = self.cluster[self.cluster >= 0]
        n = np.bincount(c, minlength=self.n_clusters)
        m = np.bincount(c, weights=self.mask[self.cluster >= 0].astype(np.float64), minlength=self.n_clusters)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, m / np.maximum(n, 1), np.nan), n


def frame_mask(features: np.ndarray, valid: np.ndarray, frame_index: int, cfg: MaskConfig, seed: int,
               epoch: int = 0) -> FrameMask:
    """I²Mask of frame ``frame_index`` from its teacher features (V, 64) and validity (V,): the mask
    pre-training uses at ``epoch`` with ``train.seed = seed`` (one generator per (seed, epoch,
    frame): the call :func:`gpicture.training.pretrain.masks_for_batch` makes for the frame, which
    keeps only the mask; here the cluster ids come along)."""
    import torch  # lazy: rendering workers start faster without torch

    from gpicture.models.i2mask import i2mask_batch  # lazy: torch only for the mask view
    from gpicture.training.pretrain import frame_seed  # lazy: torch only for the mask view

    feats = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    ok = torch.from_numpy(np.asarray(valid, dtype=bool))
    gen = torch.Generator(device="cpu").manual_seed(frame_seed(seed, epoch, int(frame_index)))
    res = i2mask_batch(feats, torch.zeros(len(feats), dtype=torch.long), valid=ok, n_clusters=cfg.n_clusters,
                       n_partition=tuple(cfg.n_partition), lambda_threshold=cfg.lambda_threshold,
                       base_mask_ratio=tuple(cfg.base_mask_ratio), generator=gen)
    return FrameMask(res.mask.numpy(), res.cluster.numpy().astype(np.int64), cfg.n_clusters)


# ------------------------------------------------------------------------------------------------
# Detection predictions
# ------------------------------------------------------------------------------------------------


@dataclass
class FrameBoxesLidar:
    """Predicted boxes of one frame in the points' frame."""

    boxes: np.ndarray  # (K, 7) float64 x, y, z, l, w, h, yaw (m, rad)
    names: np.ndarray  # (K,) str
    scores: np.ndarray  # (K,) float64


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(K, 4) w, x, y, z quaternions -> (K, 3, 3) rotation matrices (normalised first)."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], 1)


def global_to_lidar_boxes(translation: np.ndarray, size_wlh: np.ndarray, rotation: np.ndarray,
                          pose: np.ndarray) -> np.ndarray:
    """Submission boxes (global centre (K, 3), size w, l, h (K, 3), rotation w, x, y, z (K, 4)) ->
    (K, 7) x, y, z, l, w, h, yaw in the frame of ``pose`` (4, 4) global_from_points; the inverse
    of :func:`gpicture.eval.nuscenes_submission.lidar_boxes_to_submission`."""
    rot, t = pose[:3, :3], pose[:3, 3]
    centre = (np.asarray(translation, np.float64) - t) @ rot  # R^T (p - t), row-wise
    r_local = np.einsum("ji,kjl->kil", rot, _quat_to_matrix(np.asarray(rotation, np.float64)))
    yaw = np.arctan2(r_local[:, 1, 0], r_local[:, 0, 0])
    s = np.asarray(size_wlh, np.float64)
    return np.column_stack([centre, s[:, 1], s[:, 0], s[:, 2], yaw])


@functools.lru_cache(maxsize=2)
def _submission(path: Path) -> dict[str, list[dict]]:
    try:
        sub = json.loads(Path(path).read_text())
        results = sub["results"]
        if not isinstance(results, dict):
            raise TypeError("'results' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a nuScenes detection submission ({exc})") from None
    return results


def check_detection_frames(path: Path, store: VoxelStore) -> None:
    """ValueError unless the predictions file at ``path`` is for frames of ``store``."""
    ids = set(store.frame_ids)
    match dataset_spec(store.attrs["dataset"]).detection_format:
        case DetectionFormat.NUSCENES_SUBMISSION:
            tokens = set(_submission(Path(path)))
        case DetectionFormat.WAYMO_OBJECTS:  # read_objects itself refuses frames outside the store
            tokens = set(_waymo_objects(Path(path), tuple(store.frame_ids)))
    extra = sorted(tokens - ids)
    if extra:
        raise ValueError(f"{path}: predictions for {len(extra)} frame(s) that are not in {store.path}, e.g. "
                         f"{extra[0]!r} (predictions for other frames?)")


@functools.lru_cache(maxsize=2)
def _waymo_objects(path: Path, frame_ids: tuple[str, ...]) -> dict:
    from gpicture.eval.waymo_objects import read_objects  # lazy: the Waymo protos only for Waymo

    return read_objects(path, frame_ids)


def frame_detections(path: Path, store: VoxelStore, index: int) -> FrameBoxesLidar:
    """The predicted boxes of frame ``index`` from a detection predictions file, in the store's
    frame (see the module docstring). ValueError naming the file when it is for other frames."""
    path = Path(path)
    check_detection_frames(path, store)
    fid = store.frame_ids[index]
    if dataset_spec(store.attrs["dataset"]).detection_format is DetectionFormat.NUSCENES_SUBMISSION:
        results = _submission(path)
        if fid not in results:
            raise ValueError(f"{path}: no entry for frame {fid!r} of {store.path} (a submission has one per "
                             "sample: predictions for other frames?)")
        rows = results[fid]
        try:
            tr = np.array([b["translation"] for b in rows], np.float64).reshape(-1, 3)
            sz = np.array([b["size"] for b in rows], np.float64).reshape(-1, 3)
            rq = np.array([b["rotation"] for b in rows], np.float64).reshape(-1, 4)
            names = np.array([str(b["detection_name"]) for b in rows], dtype=object)
            scores = np.array([float(b["detection_score"]) for b in rows], np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: sample {fid}: malformed box ({exc})") from None
        boxes = global_to_lidar_boxes(tr, sz, rq, store.pose(index)) if len(rows) else np.zeros((0, 7))
        return FrameBoxesLidar(boxes, names, scores)
    fb = _waymo_objects(path, tuple(store.frame_ids))[fid]
    scores = np.ones(len(fb.boxes)) if fb.scores is None else np.asarray(fb.scores, np.float64)
    return FrameBoxesLidar(np.asarray(fb.boxes, np.float64).reshape(-1, 7), np.asarray(fb.names, dtype=object), scores)


# ------------------------------------------------------------------------------------------------
# Occupancy predictions
# ------------------------------------------------------------------------------------------------


@dataclass
class OccupancyRows:
    """Predicted occupancy rows of one frame and their grid (as read from a predictions folder)."""

    grid: OccupancyGridSpec
    rows: np.ndarray  # (K, 4) int64 z, y, x, label 1..C


def occupancy_frames(path: Path, store: VoxelStore) -> tuple[OccupancyGridSpec, dict[str, str]]:
    """(grid, frame id -> file name) of an occupancy predictions folder, checked against
    ``store`` (dataset, fingerprint where recorded, frame ids). ValueError naming the folder."""
    path = Path(path)
    grid, files = read_meta(path, dataset_spec(store.attrs["dataset"]), None)
    meta = json.loads((path / META).read_text())
    fp = meta.get("store_fingerprint")
    if fp is not None and fp != store.fingerprint:
        raise ValueError(f"{path}: predictions were made for another store than {store.path} (fingerprints differ)")
    by_frame = {fid: name for name, fid in files.items()}
    extra = sorted(set(by_frame) - set(store.frame_ids))
    if extra:
        raise ValueError(f"{path}: predictions for {len(extra)} frame(s) that are not in {store.path}, "
                         f"e.g. {extra[0]!r} (predictions for other frames?)")
    return grid, by_frame


def frame_occupancy(path: Path, store: VoxelStore, index: int, num_classes: int) -> OccupancyRows:
    """The occupancy prediction of frame ``index``; ValueError naming the folder when it has none."""
    grid, by_frame = occupancy_frames(path, store)
    fid = store.frame_ids[index]
    if fid not in by_frame:
        raise ValueError(f"{path}: no prediction for frame {fid!r} of {store.path}")
    return OccupancyRows(grid, read_rows(Path(path) / f"{by_frame[fid]}.npy", grid, num_classes))


def is_occupancy_predictions(path: Path) -> bool:
    """A predictions folder (occupancy) rather than a detection file."""
    return Path(path).is_dir()


def frame_voxel_labels(frame: StoreFrame, lut: np.ndarray) -> np.ndarray:
    """Majority class id (through ``lut`` (256,) stored label -> class, -1 none) of each voxel's
    labelled points: (V,) int64, -1 where no point of the voxel has a label. Ties: smallest id."""
    v = len(frame.voxel_coords)
    if frame.seg_labels is None:
        return np.full(v, -1, dtype=np.int64)
    ids = lut[frame.seg_labels.astype(np.int64)]
    ok = (frame.point_voxel >= 0) & (ids >= 0)
    vox, ids = frame.point_voxel[ok].astype(np.int64), ids[ok]
    out = np.full(v, -1, dtype=np.int64)
    if len(vox) == 0:
        return out
    pair, count = np.unique(vox * 256 + ids, return_counts=True)
    pv, pl = pair // 256, pair % 256
    order = np.lexsort((pl, -count, pv))
    pv, pl = pv[order], pl[order]
    first = np.ones(len(pv), dtype=bool)
    first[1:] = pv[1:] != pv[:-1]
    out[pv[first]] = pl[first]
    return out
