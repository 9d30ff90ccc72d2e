"""CenterPoint training targets on the BEV grid, vectorized over boxes.

Heatmaps get a 2D gaussian per ground-truth box at its centre cell (radius from the
box size, CenterNet's rule with the given minimum overlap); regression targets live at
the centre cells: sub-cell offset, height, log size, sin/cos of the heading and the
velocity. Frames: the points' frame, metres, radians.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class BEVGrid:
    """The detection head's output grid: ``point_cloud_range`` cut in cells of ``cell`` metres."""

    point_cloud_range: tuple[float, ...]
    cell: tuple[float, float]  # x, y metres per output cell

    @property
    def shape(self) -> tuple[int, int]:  # (ny, nx)
        nx = round((self.point_cloud_range[3] - self.point_cloud_range[0]) / self.cell[0])
        ny = round((self.point_cloud_range[4] - self.point_cloud_range[1]) / self.cell[1])
        return ny, nx


def gaussian_radius(length: Tensor, width: Tensor, min_overlap: float = 0.1) -> Tensor:
    """CenterNet's radius (in cells) for boxes of ``length`` x ``width`` cells: the largest
    centre shift keeping IoU >= ``min_overlap`` in the worst of its three cases."""
    h, w = length, width
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + torch.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


@dataclass
class CenterTargets:
    heatmap: Tensor  # (B, C, ny, nx) float in [0, 1]
    index: Tensor  # (B, K) int64 flat centre cell of each box (0 where padded)
    mask: Tensor  # (B, K) bool real box
    regression: Tensor  # (B, K, 10) dx, dy, z, log l, log w, log h, sin, cos, vx, vy
    cls: Tensor  # (B, K) int64 class within the head's classes


def build_targets(boxes: list[Tensor], labels: list[Tensor], velocities: list[Tensor], num_classes: int,
                  grid: BEVGrid, max_objects: int = 500, min_overlap: float = 0.1, min_radius: int = 2) -> CenterTargets:
    """Targets for a batch: per frame ``boxes`` (M, 7), ``labels`` (M,) in [0, num_classes), ``velocities`` (M, 2)."""
    ny, nx = grid.shape
    b = len(boxes)
    dev = boxes[0].device if b else torch.device("cpu")
    heat = torch.zeros(b, num_classes, ny * nx, device=dev)
    index = torch.zeros(b, max_objects, dtype=torch.long, device=dev)
    mask = torch.zeros(b, max_objects, dtype=torch.bool, device=dev)
    reg = torch.zeros(b, max_objects, 10, device=dev)
    cls = torch.zeros(b, max_objects, dtype=torch.long, device=dev)
    x0, y0 = grid.point_cloud_range[0], grid.point_cloud_range[1]
    for i in range(b):  # frames of a batch
        bx, lab, vel = boxes[i][:max_objects], labels[i][:max_objects], velocities[i][:max_objects]
        cx = (bx[:, 0] - x0) / grid.cell[0]
        cy = (bx[:, 1] - y0) / grid.cell[1]
        inside = (cx >= 0) & (cx < nx) & (cy >= 0) & (cy < ny) & (bx[:, 3] > 0) & (bx[:, 4] > 0)
        bx, lab, vel, cx, cy = bx[inside], lab[inside], vel[inside], cx[inside], cy[inside]
        m = len(bx)
        if m == 0:
            continue
        ix, iy = cx.long(), cy.long()
        radius = gaussian_radius(bx[:, 3] / grid.cell[0], bx[:, 4] / grid.cell[1], min_overlap)
        radius = radius.floor().long().clamp_min(min_radius)
        r_max = int(radius.max())
        off = torch.arange(-r_max, r_max + 1, device=dev)
        oy, ox = torch.meshgrid(off, off, indexing="ij")
        ox, oy = ox.reshape(-1), oy.reshape(-1)
        px, py = ix[:, None] + ox, iy[:, None] + oy  # (m, W)
        sigma = (2 * radius + 1).float() / 6
        g = torch.exp(-(ox.float() ** 2 + oy.float() ** 2)[None] / (2 * sigma[:, None] ** 2))
        ok = (px >= 0) & (px < nx) & (py >= 0) & (py < ny) & (ox.abs()[None] <= radius[:, None]) & (oy.abs()[None] <= radius[:, None])
        flat = (lab[:, None] * (ny * nx) + py * nx + px)[ok]
        heat[i].view(-1).scatter_reduce_(0, flat, g[ok], reduce="amax")
        index[i, :m] = iy * nx + ix
        mask[i, :m] = True
        cls[i, :m] = lab
        reg[i, :m] = torch.stack([cx - ix, cy - iy, bx[:, 2], bx[:, 3].log(), bx[:, 4].log(), bx[:, 5].log(),
                                  torch.sin(bx[:, 6]), torch.cos(bx[:, 6]),
                                  torch.nan_to_num(vel[:, 0]), torch.nan_to_num(vel[:, 1])], 1)
    return CenterTargets(heat.view(b, num_classes, ny, nx), index, mask, reg, cls)
