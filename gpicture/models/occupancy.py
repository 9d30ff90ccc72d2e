"""Semantic occupancy from the student's BEV map: a 2D trunk and a channel-to-height head.

The DSVT output is scattered into its BEV map (B, C, ny_s, nx_s) on the store's grid, passed
through the light residual 2D trunk of the detection head, resampled bilinearly at the
occupancy grid's column centres (the occupancy grid may have another range or cell size than
the store's), and a 1x1 convolution gives (C_cls * nz) channels per column that are read as
class logits per height: (B, K + 1, nz, ny, nx), class 0 = empty. A 2D head is several times
faster on CPU than a sparse 3D decoder and sees every column, including empty ones.

Loss: cross entropy over every voxel of the grid, the empty class down-weighted
(``empty_weight``) against its overwhelming majority, ground-truth OCCUPANCY_IGNORE voxels skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpicture.data.batch import VoxelBatch, move_to
from gpicture.data.occupancy_targets import OccupancyGridSpec
from gpicture.data.spec import OCCUPANCY_IGNORE
from gpicture.models.detection.bev import BEVBackbone
from gpicture.models.student import Student


@dataclass
class OccupancyBatch:
    """Frames of a batch with their occupancy targets."""

    voxels: VoxelBatch  # on the store's grid
    target: Tensor  # (B, nz, ny, nx) uint8 on the occupancy grid: 0 empty, 1..K, OCCUPANCY_IGNORE

    @property
    def batch_size(self) -> int:
        return self.voxels.batch_size

    def to(self, device: torch.device | str) -> OccupancyBatch:
        return move_to(self, device)


def _sampling_grid(store_range: tuple[float, ...], grid: OccupancyGridSpec) -> Tensor:
    """(1, ny, nx, 2) normalised (x, y) positions of the occupancy columns' centres in the store's
    BEV map (``grid_sample`` with ``align_corners=False``: -1 and 1 are the map's outer edges)."""
    x0, y0 = grid.point_cloud_range[:2]
    _, ny, nx = grid.shape_zyx
    vx, vy = grid.voxel_size[0], grid.voxel_size[1]
    xs = x0 + (torch.arange(nx, dtype=torch.float64) + 0.5) * vx
    ys = y0 + (torch.arange(ny, dtype=torch.float64) + 0.5) * vy
    sx0, sy0, _, sx1, sy1, _ = store_range
    u = 2 * (xs - sx0) / (sx1 - sx0) - 1
    v = 2 * (ys - sy0) / (sy1 - sy0) - 1
    gy, gx = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([gx, gy], -1)[None].float()


class Occupier(nn.Module):
    """Student + BEV trunk + channel-to-height occupancy head over ``num_classes`` classes (+ empty)."""

    def __init__(self, student: Student, num_classes: int, grid_spec: OccupancyGridSpec, trunk_channels: int = 64,
                 empty_weight: float = 0.1) -> None:
        super().__init__()
        self.student = student
        self.num_classes = int(num_classes)
        self.grid_spec = grid_spec
        self.empty_weight = float(empty_weight)
        self.trunk = BEVBackbone(student.bev_channels, trunk_channels)
        nz, _, _ = grid_spec.shape_zyx
        self.head = nn.Conv2d(trunk_channels, (self.num_classes + 1) * nz, 1)
        # Start from "mostly empty" so the first steps do not flood the grid with objects.
        with torch.no_grad():
            bias = self.head.bias.view(self.num_classes + 1, nz)
            bias.zero_()
            bias[0] = 2.0
        weight = torch.ones(self.num_classes + 1)
        weight[0] = self.empty_weight
        self.register_buffer("class_weight", weight, persistent=False)
        self.register_buffer("sample_grid", _sampling_grid(student.cfg.point_cloud_range, grid_spec), persistent=False)

    def forward(self, batch: OccupancyBatch) -> Tensor:
        """Logits (B, K + 1, nz, ny, nx) on the occupancy grid."""
        out = self.student.encode(batch.voxels)
        x = self.trunk(self.student.bev(out, batch.batch_size))
        x = F.grid_sample(x, self.sample_grid.expand(x.shape[0], -1, -1, -1).to(x.dtype), mode="bilinear",
                          padding_mode="zeros", align_corners=False)
        nz, ny, nx = self.grid_spec.shape_zyx
        return self.head(x).view(x.shape[0], self.num_classes + 1, nz, ny, nx)

    def loss(self, batch: OccupancyBatch) -> tuple[Tensor, dict[str, float]]:
        """Weighted cross entropy over the grid (OCCUPANCY_IGNORE voxels skipped) and the batch's
        geometric IoU (for the logs)."""
        return self.loss_from_logits(self(batch), batch.target)

    def loss_from_logits(self, logits: Tensor, target: Tensor) -> tuple[Tensor, dict[str, float]]:
        """:meth:`loss` of logits (B, K + 1, nz, ny, nx) against targets (B, nz, ny, nx) (a DDP
        step runs the forward through its wrapper, then this)."""
        logits = logits.float()  # CE in float32 under AMP
        target = target.long()
        loss = F.cross_entropy(logits, target, weight=self.class_weight, ignore_index=OCCUPANCY_IGNORE)
        with torch.no_grad():
            valid = target != OCCUPANCY_IGNORE
            pred_occ = (logits.argmax(1) > 0) & valid
            true_occ = (target > 0) & valid
            inter = (pred_occ & true_occ).sum()
            union = (pred_occ | true_occ).sum().clamp_min(1)
            iou = float(inter) / float(union)
        return loss, {"ce": float(loss.detach()), "geo_iou": iou}

    @torch.no_grad()
    def predict(self, batch: OccupancyBatch) -> Tensor:
        """(B, nz, ny, nx) uint8 labels, 0 empty."""
        return self(batch).argmax(1).to(torch.uint8)
