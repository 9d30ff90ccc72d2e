"""The detector: the student backbone, its BEV map, and the CenterPoint head."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gpicture.models.detection.centerpoint import CenterPoint, Detections
from gpicture.models.detection.targets import BEVGrid
from gpicture.models.student import Student
from gpicture.training.detection_data import DetectionBatch


class Detector(nn.Module):
    def __init__(self, student: Student, tasks: list[list[str]], stride: int = 1) -> None:
        """``stride``: the head's output cell in BEV cells (1: the voxel grid; 2: half resolution)."""
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
        self.head = CenterPoint(student.bev_channels, tasks, grid, stride=stride)

    def forward(self, batch: DetectionBatch):  # noqa: ANN201
        out = self.student(batch.points, batch.features, batch.point_voxel, batch.voxel_coords)
        return self.head(self.student.bev(out, batch.batch_size))

    def loss(self, batch: DetectionBatch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.head.loss(self(batch), batch.boxes, batch.labels, batch.velocity)

    @torch.no_grad()
    def detect(self, batch: DetectionBatch, score_threshold: float = 0.1) -> list[Detections]:
        return self.head.decode(self(batch), score_threshold=score_threshold)

    def load_pretrained(self, path: Path) -> dict[str, list[str]]:
        """Load a pre-trained student (``student.pt``) into the backbone; returns the loaded,
        missing and unexpected keys (a layout that does not fit is refused)."""
        from gpicture.training.finetune_common import load_pretrained_student

        return load_pretrained_student(self.student, path)
