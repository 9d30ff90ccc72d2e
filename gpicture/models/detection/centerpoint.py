"""A CenterPoint head on the BEV map: class-group heatmaps and box regression, losses,
and decoding with rotated-box NMS (``csrc/`` native op).

Each task (a group of classes, e.g. nuScenes' [truck, construction_vehicle]) has its own
heatmap and regression branches over a shared BEV convolutional trunk. Regression
channels: sub-cell offset (2), height (1), log size (3), sin/cos heading (2), velocity (2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpicture.models.detection.targets import BEVGrid, CenterTargets, build_targets
from gpicture.ops import nms_rotated

CODE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)  # CenterPoint's nuScenes weights


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class BEVBackbone(nn.Module):
    """A light 2D residual trunk on the scattered BEV features. ``stride`` 2 halves the map in
    its stem (the CPU profile's heads then run on 4x fewer cells)."""

    def __init__(self, cin: int, channels: int = 64, blocks: int = 2, stride: int = 1) -> None:
        super().__init__()
        self.stem = _conv(cin, channels, stride)
        self.blocks = nn.ModuleList(nn.Sequential(_conv(channels, channels), _conv(channels, channels)) for _ in range(blocks))
        self.out_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for blk in self.blocks:
            x = x + blk(x)
        return x


class CenterHead(nn.Module):
    """Heatmaps (B, C_task, ny, nx) and regressions (B, 10, ny, nx) per task."""

    def __init__(self, cin: int, tasks: list[list[str]], head_channels: int = 64) -> None:
        super().__init__()
        self.tasks = tasks
        self.heat = nn.ModuleList()
        self.reg = nn.ModuleList()
        for names in tasks:
            heat = nn.Sequential(_conv(cin, head_channels), nn.Conv2d(head_channels, len(names), 1))
            nn.init.constant_(heat[-1].bias, -2.19)  # prior 0.1, as in CenterNet
            self.heat.append(heat)
            self.reg.append(nn.Sequential(_conv(cin, head_channels), nn.Conv2d(head_channels, 10, 1)))

    def forward(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        return [(h(x), r(x)) for h, r in zip(self.heat, self.reg, strict=True)]


def focal_loss(logits: Tensor, target: Tensor, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of positives."""
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1 - pos
    pos_loss = torch.log(p) * (1 - p) ** alpha * pos
    neg_loss = torch.log(1 - p) * p**alpha * (1 - target) ** beta * neg
    n = pos.sum().clamp_min(1)
    return -(pos_loss.sum() + neg_loss.sum()) / n


def _gather(feat: Tensor, index: Tensor) -> Tensor:
    """(B, C, ny, nx) at flat cells (B, K) -> (B, K, C)."""
    b, c = feat.shape[:2]
    return feat.reshape(b, c, -1).gather(2, index[:, None, :].expand(b, c, index.shape[1])).transpose(1, 2)


@dataclass
class Detections:
    boxes: Tensor  # (D, 7) x, y, z, l, w, h, yaw
    scores: Tensor  # (D,)
    labels: Tensor  # (D,) index into the flat class list
    velocity: Tensor  # (D, 2)


class CenterPoint(nn.Module):
    """BEV trunk + CenterPoint head, with losses and decoding."""

    def __init__(self, bev_channels: int, tasks: list[list[str]], grid: BEVGrid, trunk_channels: int = 64,
                 stride: int = 1) -> None:
        """``grid`` is the output grid: the BEV map's cells times ``stride``."""
        super().__init__()
        self.tasks = tasks
        self.class_names = [n for t in tasks for n in t]
        self.grid = grid
        self.trunk = BEVBackbone(bev_channels, trunk_channels, stride=stride)
        self.head = CenterHead(trunk_channels, tasks, trunk_channels)
        self.register_buffer("code_weights", torch.tensor(CODE_WEIGHTS), persistent=False)

    def forward(self, bev: Tensor) -> list[tuple[Tensor, Tensor]]:
        return self.head(self.trunk(bev))

    def loss(self, outputs: list[tuple[Tensor, Tensor]], boxes: list[Tensor], labels: list[Tensor],
             velocities: list[Tensor]) -> tuple[Tensor, dict[str, float]]:
        """``labels`` index the flat class list; each task takes its own classes."""
        total = outputs[0][0].new_zeros(())
        logs: dict[str, float] = {}
        offset = 0
        for t, (names, (heat, reg)) in enumerate(zip(self.tasks, outputs, strict=True)):
            sel = [(lab >= offset) & (lab < offset + len(names)) for lab in labels]
            tg: CenterTargets = build_targets([b[s] for b, s in zip(boxes, sel, strict=True)],
                                              [lab[s] - offset for lab, s in zip(labels, sel, strict=True)],
                                              [v[s] for v, s in zip(velocities, sel, strict=True)], len(names), self.grid)
            hl = focal_loss(heat, tg.heatmap)
            pred = _gather(reg, tg.index)
            w = tg.mask.float()[..., None] * self.code_weights
            rl = (F.l1_loss(pred, tg.regression, reduction="none") * w).sum() / tg.mask.sum().clamp_min(1)
            total = total + hl + 0.25 * rl
            logs[f"task{t}_heatmap"] = float(hl.detach())
            logs[f"task{t}_regression"] = float(rl.detach())
            offset += len(names)
        return total, logs

    @torch.no_grad()
    def decode(self, outputs: list[tuple[Tensor, Tensor]], top_k: int = 500, score_threshold: float = 0.1,
               nms_threshold: float = 0.2, max_out: int = 300) -> list[Detections]:
        """Boxes per frame: 3x3 max-pool peaks, top-K per task, score threshold, rotated NMS per task."""
        b = outputs[0][0].shape[0]
        ny, nx = self.grid.shape
        x0, y0 = self.grid.point_cloud_range[:2]
        per_frame: list[list[Detections]] = [[] for _ in range(b)]
        offset = 0
        for names, (heat, reg) in zip(self.tasks, outputs, strict=True):
            prob = heat.sigmoid()
            peak = prob == F.max_pool2d(prob, 3, stride=1, padding=1)
            prob = prob * peak
            c = len(names)
            scores, flat = prob.reshape(b, -1).topk(min(top_k, c * ny * nx))
            cls = torch.div(flat, ny * nx, rounding_mode="floor")
            cell = flat % (ny * nx)
            r = _gather(reg, cell)  # (B, K, 10)
            iy, ix = torch.div(cell, nx, rounding_mode="floor"), cell % nx
            x = (ix + r[..., 0]) * self.grid.cell[0] + x0
            y = (iy + r[..., 1]) * self.grid.cell[1] + y0
            size = r[..., 3:6].clamp(-5, 5).exp()
            yaw = torch.atan2(r[..., 6], r[..., 7])
            boxes = torch.cat([x[..., None], y[..., None], r[..., 2:3], size, yaw[..., None]], -1)
            for i in range(b):  # frames of a batch
                keep = scores[i] > score_threshold
                bx, sc = boxes[i][keep], scores[i][keep]
                kept = nms_rotated(bx, sc, nms_threshold)[:max_out]
                per_frame[i].append(Detections(bx[kept], sc[kept], cls[i][keep][kept] + offset, r[i][keep][kept][:, 8:10]))
            offset += c
        return [Detections(*(torch.cat([getattr(d, f) for d in dets]) for f in ("boxes", "scores", "labels", "velocity")))
                for dets in per_frame]
