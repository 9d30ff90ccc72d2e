"""The batch core every model input shares: one frame's voxelized points, and B of them.

:class:`VoxelItem` is one frame as a dataset item returns it (numpy, the frame's own voxel
rows); :class:`VoxelBatch` is B frames concatenated in frame order (torch), voxel rows
carrying their frame index and each point's voxel index made batch-global. The
pre-training batch and the three task batches hold a ``VoxelBatch`` plus their own targets,
and move to a device with :func:`move_to`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from gpicture.data.store import StoreFrame


@dataclass(frozen=True)
class VoxelItem:
    """One frame's points and their voxels on a grid (the store's canonical one unless a
    dataset re-voxelizes after augmentation)."""

    points: np.ndarray  # (N, 3) float32 x, y, z in the frame's points' frame (LiDAR / vehicle), m
    features: np.ndarray  # (N, C) float32 point features, columns in the model's point_features order
    coords: np.ndarray  # (V, 3) int32 z, y, x voxel coordinates
    point_voxel: np.ndarray  # (N,) int row of `coords` of each point, -1 outside the grid
    index: int  # the frame's index in its store

    @classmethod
    def from_frame(cls, frame: StoreFrame, feature_names: list[str]) -> VoxelItem:
        """A store frame as it is stored (its own voxelization, the named feature columns)."""
        return cls(frame.points, frame_features(frame, feature_names), frame.voxel_coords, frame.point_voxel,
                   frame.index)


def frame_features(frame: StoreFrame, feature_names: list[str]) -> np.ndarray:
    """(N, C) float32 feature columns ``feature_names`` of a store frame."""
    if not feature_names:
        return np.zeros((len(frame.points), 0), np.float32)
    return np.stack([frame.features[n] for n in feature_names], 1).astype(np.float32)


@dataclass
class VoxelBatch:
    """B frames, points and voxels concatenated in frame order."""

    points: Tensor  # (N, 3) float32 m, each frame's points' frame
    features: Tensor  # (N, C) float32 point features
    point_voxel: Tensor  # (N,) int64 row of voxel_coords, -1 for points outside the grid
    voxel_coords: Tensor  # (V, 4) int32 b, z, y, x
    point_ptr: Tensor  # (B + 1,) int64 CSR offsets of each frame's points
    frame_index: Tensor  # (B,) int64 index of each frame in its store

    @property
    def batch_size(self) -> int:
        return len(self.frame_index)

    @property
    def point_batch(self) -> Tensor:
        """(N,) int64 frame (0..B-1) of each point."""
        return torch.repeat_interleave(torch.arange(self.batch_size), torch.diff(self.point_ptr.cpu())).to(
            self.points.device)

    @classmethod
    def stack(cls, items: list[VoxelItem]) -> VoxelBatch:
        """Concatenate items: voxel rows get their batch index, each frame's ``point_voxel`` the
        offset of its voxels (-1 stays -1)."""
        n_vox = [len(it.coords) for it in items]
        off = np.concatenate([[0], np.cumsum(n_vox)[:-1]]).astype(np.int64)
        pv = np.concatenate([np.where(it.point_voxel >= 0, it.point_voxel.astype(np.int64) + o, -1)
                             for it, o in zip(items, off, strict=True)])
        coords = np.concatenate([np.column_stack([np.full(len(it.coords), b, np.int32), it.coords])
                                 for b, it in enumerate(items)])
        n_pts = [len(it.points) for it in items]
        return cls(points=torch.from_numpy(np.concatenate([it.points for it in items]).astype(np.float32)),
                   features=torch.from_numpy(np.concatenate([it.features for it in items])),
                   point_voxel=torch.from_numpy(pv), voxel_coords=torch.from_numpy(coords.astype(np.int32)),
                   point_ptr=torch.from_numpy(np.concatenate([[0], np.cumsum(n_pts)]).astype(np.int64)),
                   frame_index=torch.tensor([it.index for it in items], dtype=torch.int64))

    def to(self, device: torch.device | str) -> VoxelBatch:
        return move_to(self, device)


def collate_frames(frames: list[StoreFrame], feature_names: list[str]) -> VoxelBatch:
    """Store frames as they are stored, batched (pre-training, CKA probes)."""
    return VoxelBatch.stack([VoxelItem.from_frame(f, list(feature_names)) for f in frames])


B = TypeVar("B")


def move_to(batch: B, device: torch.device | str) -> B:
    """A copy of a batch dataclass with every tensor (also in lists and nested batch
    dataclasses) on ``device``; other fields are shared."""

    def mv(v: Any) -> Any:
        if isinstance(v, Tensor):
            return v.to(device)
        if isinstance(v, list):
            return [mv(x) for x in v]
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return move_to(v, device)
        return v

    return dataclasses.replace(batch, **{f.name: mv(getattr(batch, f.name)) for f in dataclasses.fields(batch)})
