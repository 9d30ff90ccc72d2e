"""The detector: the student backbone, its BEV map, and the CenterPoint head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gpicture.data.batch import VoxelBatch, move_to
from gpicture.models.detection.centerpoint import CenterPoint, Detections, HeadConfig
from gpicture.models.detection.targets import BEVGrid
from gpicture.models.student import Student


@dataclass
class DetectionBatch:
    """B frames with their ground-truth boxes (LiDAR frame)."""

    voxels: VoxelBatch
    boxes: list[Tensor]  # B x (M, 7) float32 x, y, z, l, w, h, yaw (m, rad)
    labels: list[Tensor]  # B x (M,) int64 index into the detector's flat class list
    velocity: list[Tensor]  # B x (M, 2) float32 vx, vy (m/s)

    @property
    def batch_size(self) -> int:
        return self.voxels.batch_size

    def to(self, device: torch.device | str) -> DetectionBatch:
        return move_to(self, device)


class Detector(nn.Module):
    def __init__(self, student: Student, tasks: list[list[str]], stride: int = 1, head: HeadConfig | None = None) -> None:
        """``tasks``: CenterPoint's class groups (one heatmap head each); ``stride``: the head's
        output cell in BEV cells (1: the voxel grid; 2: half resolution); ``head``: the head's
        shape and post-processing."""
        super().__init__()
        if stride not in (1, 2, 4):
            raise ValueError(f"detection head stride must be 1, 2 or 4, got {stride}")
        self.student = student
        self.stride = stride
        cfg = student.cfg
        nx, ny = cfg.dsvt.sparse_shape[0], cfg.dsvt.sparse_shape[1]
        if nx % stride or ny % stride:
            raise ValueError(f"BEV grid {nx} x {ny} is not divisible by the head stride {stride}")
        pcr = cfg.point_cloud_range
        grid = BEVGrid(pcr, ((pcr[3] - pcr[0]) / nx * stride, (pcr[4] - pcr[1]) / ny * stride))
        self.head = CenterPoint(student.bev_channels, tasks, grid, head, stride=stride)

    def forward(self, voxels: VoxelBatch):
        """The head's raw outputs per class group."""
        out = self.student.encode(voxels)
        return self.head(self.student.bev(out, voxels.batch_size))

    def loss(self, batch: DetectionBatch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_from_outputs(self(batch.voxels), batch)

    def loss_from_outputs(self, outputs, batch: DetectionBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of head outputs computed elsewhere (under DDP: by the wrapper's forward)."""
        return self.head.loss(outputs, batch.boxes, batch.labels, batch.velocity)

    @torch.no_grad()
    def detect(self, voxels: VoxelBatch, score_threshold: float = 0.1) -> list[Detections]:
        return self.head.decode(self(voxels), score_threshold=score_threshold)
