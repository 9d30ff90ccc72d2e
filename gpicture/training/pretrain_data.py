"""Pre-training batches: a voxel store joined with its teacher store.

Per voxel the batch carries the teacher target (64-d, with a validity flag: voxels
without teacher points have none) and up to ``max_points`` true points relative to
the voxel centre, in voxel units (the reconstruction targets).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from gpicture.data.dataset import collate_frames
from gpicture.data.store import StoreFrame, VoxelStore
from gpicture.ops import in_group_index
from gpicture.teacher.cache import TeacherStore


@dataclass
class PretrainBatch:
    """A batch of B frames for pre-training (rows of voxel arrays follow voxel_coords)."""

    points: Tensor  # (N, 3) float32 m
    features: Tensor  # (N, C) float32 point features (model.point_features order)
    point_voxel: Tensor  # (N,) int64 row of voxel_coords, -1 outside the grid
    voxel_coords: Tensor  # (V, 4) int32 b, z, y, x
    teacher: Tensor  # (V, 64) float32 teacher features
    teacher_valid: Tensor  # (V,) bool voxel has a teacher target
    true_points: Tensor  # (V, P, 3) float32 points relative to the voxel centre, voxel units, first P by store order
    true_count: Tensor  # (V,) int64 valid rows of true_points (>= 1)
    frame_index: Tensor  # (B,) int64 store index of each frame
    batch_size: int

    def to(self, device: torch.device | str) -> PretrainBatch:
        moved = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.__dict__.items()}
        return PretrainBatch(**moved)


class PretrainDataset(Dataset):
    """(StoreFrame, teacher features, teacher valid) per frame; opens the stores lazily per process."""

    def __init__(self, store: str | Path, teacher: str | Path, frames: list[int] | None = None) -> None:
        self.store_path, self.teacher_path = Path(store), Path(teacher)
        src = VoxelStore.open(self.store_path)
        TeacherStore.open(self.teacher_path, source=src)  # refuse a stale cache now, with a clear error
        self.attrs = src.attrs
        self.frames = list(range(len(src))) if frames is None else list(frames)
        self._store: VoxelStore | None = None
        self._teacher: TeacherStore | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None, "_teacher": None}

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> tuple[StoreFrame, np.ndarray, np.ndarray]:
        if self._store is None:
            self._store = VoxelStore.open(self.store_path)
            self._teacher = TeacherStore.open(self.teacher_path)
        k = self.frames[i]
        feats, valid = self._teacher.frame(k)
        return self._store[k], feats, valid


def collate_pretrain(items: list, feature_names: list[str], voxel_size: tuple[float, float, float],
                     point_cloud_range: tuple[float, ...], max_points: int = 64) -> PretrainBatch:
    frames = [f for f, _, _ in items]
    pb = collate_frames(frames, feature_names)
    teacher = torch.from_numpy(np.concatenate([t for _, t, _ in items]).astype(np.float32))
    valid = torch.from_numpy(np.concatenate([v for _, _, v in items]))
    v = len(pb.voxel_coords)
    inside = pb.point_voxel >= 0
    pv = pb.point_voxel[inside]
    pts = pb.points[inside]
    vs = torch.tensor(voxel_size, dtype=torch.float32)
    lo = torch.tensor(point_cloud_range[:3], dtype=torch.float32)
    centre = (pb.voxel_coords[:, [3, 2, 1]].float() + 0.5) * vs + lo
    rel = (pts - centre[pv]) / vs
    rank = in_group_index(pv, v)
    take = rank < max_points
    true = torch.zeros(v, max_points, 3)
    true[pv[take], rank[take]] = rel[take]
    count = torch.bincount(pv, minlength=v).clamp_max(max_points)
    return PretrainBatch(points=pb.points, features=pb.features, point_voxel=pb.point_voxel,
                         voxel_coords=pb.voxel_coords, teacher=teacher, teacher_valid=valid, true_points=true,
                         true_count=count, frame_index=pb.frame_index, batch_size=len(frames))
