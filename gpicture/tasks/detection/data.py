"""Detection items and batches: a voxel store's frames with their boxes as class indices,
augmented (training: GT sampling, then the global augmentation) and voxelized on the store's
canonical grid afterwards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpicture.data.batch import VoxelBatch, VoxelItem, frame_features
from gpicture.data.dataset import VoxelStoreDataset
from gpicture.data.store import VoxelStore
from gpicture.data.voxelize import VoxelGrid
from gpicture.models.detection.model import DetectionBatch
from gpicture.tasks.detection.gt_sampling import GTDatabase, GTSamplingConfig, paste
from gpicture.training.augment import AugmentConfig, augment


@dataclass(frozen=True)
class DetectionItem:
    """One frame with its boxes (the points' frame)."""

    voxels: VoxelItem
    boxes: np.ndarray  # (M, 7) float32 x, y, z, l, w, h, yaw (m, rad)
    labels: np.ndarray  # (M,) int64 index into the flat class list
    velocity: np.ndarray  # (M, 2) float32 vx, vy (m/s), NaN -> 0


class DetectionDataset(VoxelStoreDataset):
    """Frames of a store with boxes mapped to class indices (boxes with no class or no point dropped).

    With ``augment_cfg`` (training) and ``gt_sampling``, objects of a database built from this
    dataset's ``frames`` (the labelled ones) are pasted into each frame before the global
    augmentation (:mod:`gpicture.tasks.detection.gt_sampling`).
    """

    def __init__(self, store: str | Path, feature_names: list[str], class_names: list[str], class_map: dict[str, str],
                 frames: list[int] | None = None, augment_cfg: AugmentConfig | None = None, seed: int = 0,
                 gt_sampling: GTSamplingConfig | None = None) -> None:
        super().__init__(store, frames)  # path, frames, a store opened lazily in each worker
        src = VoxelStore.open(self.path)
        self.attrs = src.attrs
        self.grid = VoxelGrid(tuple(src.attrs["point_cloud_range"]), tuple(src.attrs["voxel_size"]))
        self.feature_names, self.class_names = list(feature_names), list(class_names)
        self.class_map = class_map
        self.augment_cfg, self.seed = augment_cfg, seed
        self.epoch = 0
        if gt_sampling is not None and (unknown := sorted(set(gt_sampling.sample_groups) - set(self.class_names))):
            raise ValueError(f"gt sampling: unknown classes {unknown} (classes: {self.class_names})")
        self.gt_sampling = gt_sampling
        self._gt_db: GTDatabase | None = None

    @property
    def gt_database(self) -> GTDatabase | None:
        """The ground-truth database of this dataset's frames, built on first use; None unless
        GT sampling is on (``gt_sampling`` given and training augmentation on). Touch it in the
        main process before forking DataLoader workers so that they share one copy."""
        if self.gt_sampling is None or self.augment_cfg is None:
            return None
        if self._gt_db is None:
            wanted = [c for c, n in self.gt_sampling.sample_groups.items() if n > 0]
            self._gt_db = GTDatabase.build(self.path, self.frames, self.class_names, self.class_map,
                                           self.feature_names, min_points=self.gt_sampling.min_points, classes=wanted)
        return self._gt_db

    def __getstate__(self) -> dict:
        _ = self.gt_database  # built once here, so that pickled copies (spawned workers) receive it
        return super().__getstate__()

    def __getitem__(self, i: int) -> DetectionItem:
        k = self.frames[i]
        fr = self.store[k]
        index = {n: j for j, n in enumerate(self.class_names)}
        det = np.array([index.get(self.class_map.get(n, ""), -1) for n in fr.box_names], dtype=np.int64)
        keep = (det >= 0) & (fr.box_num_points > 0)
        pts, boxes, vel, labels = fr.points, fr.boxes[keep], np.nan_to_num(fr.box_velocity[keep]), det[keep]
        feats = frame_features(fr, self.feature_names)
        if self.augment_cfg is not None:
            if (db := self.gt_database) is not None:  # its own stream: augment draws as without it
                paste_rng = np.random.default_rng([self.seed, self.epoch, k, 1])
                pts, feats, boxes, labels, vel = paste(pts, feats, boxes, labels, vel, db, self.gt_sampling, paste_rng)
            rng = np.random.default_rng([self.seed, self.epoch, k])
            pts, boxes, vel = augment(pts, boxes, vel, self.augment_cfg, rng)
        coords, pv = self.grid.voxelize(pts)
        return DetectionItem(VoxelItem(pts, feats, coords, pv, k), boxes, labels, vel)


def collate_detection(items: list[DetectionItem]) -> DetectionBatch:
    return DetectionBatch(
        voxels=VoxelBatch.stack([it.voxels for it in items]),
        boxes=[torch.from_numpy(it.boxes.astype(np.float32)) for it in items],
        labels=[torch.from_numpy(it.labels) for it in items],
        velocity=[torch.from_numpy(it.velocity.astype(np.float32)) for it in items])
