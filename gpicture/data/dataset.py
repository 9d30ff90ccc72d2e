"""A torch Dataset over a voxel store, and the collate function that makes batches.

The store is opened lazily in each process (DataLoader workers included): a dataset
object pickles as its path, never as an open Zarr handle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from gpicture.data.store import StoreFrame, VoxelStore


@dataclass
class PointBatch:
    """A batch of B frames, points and voxels concatenated (frame order kept)."""

    points: Tensor  # (N, 3) float32 x, y, z in each frame's points' frame, m
    features: Tensor  # (N, C) float32, columns in `feature_names` order
    feature_names: list[str]
    point_batch: Tensor  # (N,) int64 frame of each point, 0..B-1
    point_voxel: Tensor  # (N,) int64 index into voxel_coords, -1 for points outside the grid
    voxel_coords: Tensor  # (V, 4) int32 b, z, y, x
    seg_labels: Tensor | None  # (N,) int64 raw dataset classes, 255 = unlabelled
    boxes: list[Tensor]  # B x (M_i, 7) float32 x, y, z, l, w, h, yaw
    box_names: list[np.ndarray]  # B x (M_i,) raw category names
    frame_index: Tensor  # (B,) int64 index of each frame in the store

    @property
    def batch_size(self) -> int:
        return len(self.frame_index)


class VoxelStoreDataset(Dataset):
    """Frames of a voxel store as :class:`StoreFrame` objects (numpy arrays)."""

    def __init__(self, path: str | Path, frames: list[int] | None = None) -> None:
        self.path = Path(path)
        store = VoxelStore.open(self.path)  # validate now, in the parent, with a clear error
        self.feature_names = store.feature_names
        self.frames = list(range(len(store))) if frames is None else list(frames)
        self._store: VoxelStore | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_store"] = None
        return state

    @property
    def store(self) -> VoxelStore:
        if self._store is None:
            self._store = VoxelStore.open(self.path)
        return self._store

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> StoreFrame:
        return self.store[self.frames[i]]


def collate_frames(frames: list[StoreFrame], feature_names: list[str] | None = None) -> PointBatch:
    """Concatenate frames into a :class:`PointBatch` (voxel indices made batch-global)."""
    names = list(frames[0].features) if feature_names is None else list(feature_names)
    n_pts = np.array([len(f.points) for f in frames])
    n_vox = np.array([len(f.voxel_coords) for f in frames])
    vox_off = np.concatenate([[0], np.cumsum(n_vox)[:-1]])
    point_voxel = np.concatenate([
        np.where(f.point_voxel >= 0, f.point_voxel.astype(np.int64) + off, -1) for f, off in zip(frames, vox_off, strict=True)
    ])
    coords = np.concatenate([f.voxel_coords for f in frames]).astype(np.int32)
    b = np.repeat(np.arange(len(frames), dtype=np.int32), n_vox)
    has_seg = all(f.seg_labels is not None for f in frames)
    return PointBatch(
        points=torch.from_numpy(np.concatenate([f.points for f in frames]).astype(np.float32)),
        features=torch.from_numpy(
            np.stack([np.concatenate([f.features[n] for f in frames]) for n in names], 1).astype(np.float32)
        ) if names else torch.zeros((int(n_pts.sum()), 0)),
        feature_names=names,
        point_batch=torch.from_numpy(np.repeat(np.arange(len(frames)), n_pts)),
        point_voxel=torch.from_numpy(point_voxel),
        voxel_coords=torch.from_numpy(np.column_stack([b, coords])),
        seg_labels=torch.from_numpy(np.concatenate([f.seg_labels for f in frames]).astype(np.int64)) if has_seg else None,
        boxes=[torch.from_numpy(np.asarray(f.boxes, dtype=np.float32)) for f in frames],
        box_names=[f.box_names for f in frames],
        frame_index=torch.tensor([f.index for f in frames], dtype=torch.int64),
    )


def stack_voxelized(items: list[dict]) -> dict[str, torch.Tensor]:
    """The shared part of every task's collate: frames' ``points``, ``features``, ``coords``
    (V, 3) z, y, x and ``point_voxel`` concatenated into one batch, voxel rows getting their
    batch index and each frame's ``point_voxel`` the offset of its voxels (-1 stays -1)."""
    n_vox = [len(it["coords"]) for it in items]
    off = np.concatenate([[0], np.cumsum(n_vox)[:-1]]).astype(np.int64)
    pv = np.concatenate([np.where(it["point_voxel"] >= 0, it["point_voxel"].astype(np.int64) + o, -1)
                         for it, o in zip(items, off, strict=True)])
    coords = np.concatenate([np.column_stack([np.full(len(it["coords"]), b, np.int32), it["coords"]])
                             for b, it in enumerate(items)])
    return {"points": torch.from_numpy(np.concatenate([it["points"] for it in items]).astype(np.float32)),
            "features": torch.from_numpy(np.concatenate([it["features"] for it in items])),
            "point_voxel": torch.from_numpy(pv), "voxel_coords": torch.from_numpy(coords.astype(np.int32))}
