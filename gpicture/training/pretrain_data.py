"""Pre-training batches (:class:`gpicture.models.pretrain.PretrainBatch`): a voxel store
joined with its teacher store.

Self-supervised: no label is read. The frames come from ``VoxelStore.frame(k, labels=False)``,
which never touches a label array, so a labelled store pre-trains exactly as its unlabelled
conversion does (the pipeline pre-trains on the unlabelled ``pretrain`` split).

Per voxel the batch carries the teacher target (64-d, with a validity flag: voxels
without teacher points have none) and up to ``max_points`` true points relative to
the voxel centre, in metres (the reconstruction targets, as the original GPICTURE).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from gpicture.data.batch import collate_frames
from gpicture.data.store import StoreFrame, VoxelStore
from gpicture.models.pretrain import PretrainBatch
from gpicture.ops import in_group_index
from gpicture.teacher.cache import TeacherStore


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
        return self._store.frame(k, labels=False), feats, valid


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
    rel = pts - centre[pv]  # metres, as the original: the point loss keeps the paper's scale against the teacher's
    rank = in_group_index(pv, v)
    take = rank < max_points
    true = torch.zeros(v, max_points, 3)
    true[pv[take], rank[take]] = rel[take]
    count = torch.bincount(pv, minlength=v).clamp_max(max_points)
    return PretrainBatch(voxels=pb, teacher=teacher, teacher_valid=valid, true_points=true, true_count=count)
