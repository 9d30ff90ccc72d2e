"""A CenterPoint head on the BEV map: class-group heatmaps and box regression, losses,
and decoding with rotated-box NMS (``csrc/`` native op).

Each task (a group of classes, e.g. nuScenes' [truck, construction_vehicle]) has its own
heatmap and regression branches over a shared BEV convolutional trunk. Regression
channels: sub-cell offset (2), height (1), log size (3), sin/cos heading (2), velocity (2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from gpicture.models.detection.bev import BEVBackbone, BEVResBackbone, conv_bn_relu
from gpicture.models.detection.targets import BEVGrid, CenterTargets, build_targets
from gpicture.ops import nms_rotated, paired_iou_3d

CODE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)  # CenterPoint's nuScenes weights


@dataclass(frozen=True)
class HeadConfig:
    """The CenterPoint head's shape and post-processing (the small profile: the light trunk, one
    regression branch, 1x1 outputs, no IoU branch; the DSVT Waymo configuration: the reference
    trunk, a shared 64-channel conv, separate 3x3 branches, the IoU branch)."""

    trunk: str = "light"  # "light" (BEVBackbone) or "reference" (BEVResBackbone)
    trunk_channels: int = 64  # the light trunk's width
    shared_channels: int = 0  # a shared 3x3 conv before the branches (0: none)
    head_channels: int = 64
    separate_heads: bool = False  # one branch per regression target (offset, z, size, heading, velocity)
    final_kernel: int = 1  # the branches' last conv (the reference: 3)
    iou_rectifier: tuple[float, ...] | None = None  # per class: IoU branch on, score^(1-a) * iou^a
    nms_thresholds: tuple[float, ...] | None = None  # per class rotated-NMS IoU (None: 0.2 for all)

    def __post_init__(self) -> None:
        if self.trunk not in ("light", "reference"):
            raise ValueError(f"detection trunk must be light or reference, not {self.trunk!r}")
        if self.final_kernel not in (1, 3):
            raise ValueError(f"detection head final_kernel must be 1 or 3, got {self.final_kernel}")


REG_SPLIT = (2, 1, 3, 2, 2)  # offset, z, log size, sin/cos heading, velocity: the 10 regression channels


def _branch(cin: int, hidden: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(cin, hidden), nn.Conv2d(hidden, cout, kernel, padding=kernel // 2))


@dataclass
class TaskOutput:
    """One class group's raw head outputs on the head grid."""

    heat: Tensor  # (B, C_task, ny, nx) heatmap logits
    reg: Tensor  # (B, 10, ny, nx) regression (REG_SPLIT channels)
    iou: Tensor | None  # (B, 1, ny, nx) predicted IoU in [-1, 1] (2 IoU - 1), or None


class CenterHead(nn.Module):
    """Heatmaps, regressions and (optionally) IoU per task (class group)."""

    def __init__(self, cin: int, tasks: list[list[str]], cfg: HeadConfig) -> None:
        super().__init__()
        self.tasks = tasks
        self.shared = conv_bn_relu(cin, cfg.shared_channels) if cfg.shared_channels else nn.Identity()
        c = cfg.shared_channels or cin
        hc, k = cfg.head_channels, cfg.final_kernel
        self.heat = nn.ModuleList()
        self.reg = nn.ModuleList()
        self.iou = nn.ModuleList()
        for names in tasks:
            heat = _branch(c, hc, len(names), k)
            nn.init.constant_(heat[-1].bias, -2.19)  # prior 0.1, as in CenterNet
            self.heat.append(heat)
            parts = REG_SPLIT if cfg.separate_heads else (sum(REG_SPLIT),)
            self.reg.append(nn.ModuleList(_branch(c, hc, n, k) for n in parts))
            if cfg.iou_rectifier is not None:
                self.iou.append(_branch(c, hc, 1, k))

    def forward(self, x: Tensor) -> list[TaskOutput]:
        x = self.shared(x)
        return [TaskOutput(h(x), torch.cat([r(x) for r in regs], 1), self.iou[t](x) if len(self.iou) else None)
                for t, (h, regs) in enumerate(zip(self.heat, self.reg, strict=True))]


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

    def __init__(self, bev_channels: int, tasks: list[list[str]], grid: BEVGrid, cfg: HeadConfig | None = None,
                 stride: int = 1) -> None:
        """``grid`` is the output grid: the BEV map's cells times ``stride``."""
        super().__init__()
        cfg = cfg or HeadConfig()
        self.cfg = cfg
        self.tasks = tasks
        self.class_names = [n for t in tasks for n in t]
        n = len(self.class_names)
        for what, v in (("iou_rectifier", cfg.iou_rectifier), ("nms_thresholds", cfg.nms_thresholds)):
            if v is not None and len(v) != n:
                raise ValueError(f"detection {what} has {len(v)} values for {n} classes ({', '.join(self.class_names)})")
        self.grid = grid
        self.trunk = (BEVBackbone(bev_channels, cfg.trunk_channels, stride=stride) if cfg.trunk == "light"
                      else BEVResBackbone(bev_channels, stride=stride))
        self.head = CenterHead(self.trunk.out_channels, tasks, cfg)
        self.register_buffer("code_weights", torch.tensor(CODE_WEIGHTS), persistent=False)
        self.register_buffer("rectifier", torch.tensor(cfg.iou_rectifier or [0.0] * n), persistent=False)
        self.register_buffer("nms_thresh", torch.tensor(cfg.nms_thresholds or [0.2] * n), persistent=False)

    def forward(self, bev: Tensor) -> list[TaskOutput]:
        return self.head(self.trunk(bev))

    def boxes_at(self, reg: Tensor, cell: Tensor) -> Tensor:
        """Decoded boxes (B, K, 7) x, y, z, l, w, h, yaw (m, rad) of the regression (B, 10, ny, nx)
        at the flat cells (B, K)."""
        nx = self.grid.shape[1]
        x0, y0 = self.grid.point_cloud_range[:2]
        r = _gather(reg, cell)
        iy, ix = torch.div(cell, nx, rounding_mode="floor"), cell % nx
        x = (ix + r[..., 0]) * self.grid.cell[0] + x0
        y = (iy + r[..., 1]) * self.grid.cell[1] + y0
        size = r[..., 3:6].clamp(-5, 5).exp()
        yaw = torch.atan2(r[..., 6], r[..., 7])
        return torch.cat([x[..., None], y[..., None], r[..., 2:3], size, yaw[..., None]], -1)

    def loss(self, outputs: list[TaskOutput], boxes: list[Tensor], labels: list[Tensor],
             velocities: list[Tensor]) -> tuple[Tensor, dict[str, float]]:
        """``labels`` index the flat class list; each task takes its own classes. With the IoU
        branch, its L1 loss against 2 IoU - 1 of the (detached) decoded box with its target box
        at every centre, as the reference CenterHead."""
        total = outputs[0].heat.new_zeros(())
        logs: dict[str, float] = {}
        offset = 0
        for t, (names, out) in enumerate(zip(self.tasks, outputs, strict=True)):
            sel = [(lab >= offset) & (lab < offset + len(names)) for lab in labels]
            task_boxes = [b[s] for b, s in zip(boxes, sel, strict=True)]
            tg: CenterTargets = build_targets(task_boxes, [lab[s] - offset for lab, s in zip(labels, sel, strict=True)],
                                              [v[s] for v, s in zip(velocities, sel, strict=True)], len(names), self.grid)
            hl = focal_loss(out.heat, tg.heatmap)
            pred = _gather(out.reg, tg.index)
            w = tg.mask.float()[..., None] * self.code_weights
            rl = (F.l1_loss(pred, tg.regression, reduction="none") * w).sum() / tg.mask.sum().clamp_min(1)
            total = total + hl + 0.25 * rl
            logs[f"task{t}_heatmap"] = float(hl.detach())
            logs[f"task{t}_regression"] = float(rl.detach())
            if out.iou is not None:
                il = self._iou_loss(out, tg, task_boxes)
                total = total + il
                logs[f"task{t}_iou"] = float(il.detach())
            offset += len(names)
        return total, logs

    def _iou_loss(self, out: TaskOutput, tg: CenterTargets, task_boxes: list[Tensor]) -> Tensor:
        if not bool(tg.mask.any()):
            return out.iou.sum() * 0.0
        with torch.no_grad():
            pred_boxes = self.boxes_at(out.reg.detach(), tg.index)[tg.mask]
            # build_targets keeps each frame's in-range boxes in order: the same rows as tg.mask
            k = tg.mask.shape[1]
            true_rows = [b[:k][_in_grid(b[:k], self.grid)] for b in task_boxes]
            true = torch.cat(true_rows).to(pred_boxes)
            target = 2 * paired_iou_3d(pred_boxes, true) - 1
        iou = _gather(out.iou, tg.index)[..., 0][tg.mask]
        return F.l1_loss(iou, target.to(iou.dtype))

    @torch.no_grad()
    def decode(self, outputs: list[TaskOutput], top_k: int = 500, score_threshold: float = 0.1,
               max_out: int = 300) -> list[Detections]:
        """Boxes per frame: 3x3 max-pool peaks, top-K per task, score threshold, rotated NMS per
        class (its own IoU threshold); with the IoU branch the scores are rectified first,
        score^(1 - a_c) * iou^a_c."""
        b = outputs[0].heat.shape[0]
        ny, nx = self.grid.shape
        per_frame: list[list[Detections]] = [[] for _ in range(b)]
        offset = 0
        for names, out in zip(self.tasks, outputs, strict=True):
            prob = out.heat.sigmoid()
            peak = prob == F.max_pool2d(prob, 3, stride=1, padding=1)
            prob = prob * peak
            c = len(names)
            scores, flat = prob.reshape(b, -1).topk(min(top_k, c * ny * nx))
            cls = torch.div(flat, ny * nx, rounding_mode="floor") + offset
            cell = flat % (ny * nx)
            boxes = self.boxes_at(out.reg, cell)
            vel = _gather(out.reg, cell)[..., 8:10]
            keep_score = scores > score_threshold
            if out.iou is not None:
                iou = ((_gather(out.iou, cell)[..., 0] + 1) / 2).clamp(0, 1)
                a = self.rectifier[cls]
                scores = scores.pow(1 - a) * iou.pow(a)
            for i in range(b):  # frames of a batch
                for k in range(offset, offset + c):  # classes of the task: each its NMS threshold
                    sel = keep_score[i] & (cls[i] == k)
                    bx, sc = boxes[i][sel], scores[i][sel]
                    kept = nms_rotated(bx, sc, float(self.nms_thresh[k]))[:max_out]
                    per_frame[i].append(Detections(bx[kept], sc[kept], cls[i][sel][kept], vel[i][sel][kept]))
            offset += c
        return [Detections(*(torch.cat([getattr(d, f) for d in dets]) for f in ("boxes", "scores", "labels", "velocity")))
                for dets in per_frame]


def _in_grid(boxes: Tensor, grid: BEVGrid) -> Tensor:
    """The boxes :func:`build_targets` keeps (centre on the grid, positive size)."""
    ny, nx = grid.shape
    cx = (boxes[:, 0] - grid.point_cloud_range[0]) / grid.cell[0]
    cy = (boxes[:, 1] - grid.point_cloud_range[1]) / grid.cell[1]
    return (cx >= 0) & (cx < nx) & (cy >= 0) & (cy < ny) & (boxes[:, 3] > 0) & (boxes[:, 4] > 0)
