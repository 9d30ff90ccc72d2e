"""Bird's-eye-view rasters computed in numpy on a panel's pixel grid (no loop over points).

A BEV picture looks down: each pixel shows the highest thing in its column. Points keep the
highest point per pixel; voxel grids keep the highest occupied voxel per (y, x) column, then
each pixel takes the colour of the grid cell under its centre (nearest neighbour, exact).
"""

from __future__ import annotations

import numpy as np

from gpicture.viz.canvas import BevPanel
from gpicture.viz.palette import BACKGROUND


def blank(panel: BevPanel, color: tuple[float, float, float] = BACKGROUND) -> np.ndarray:
    """A (size, size, 3) float raster filled with ``color``."""
    return np.broadcast_to(np.asarray(color, dtype=np.float64), (panel.size, panel.size, 3)).copy()


def top_per_key(keys: np.ndarray, height: np.ndarray) -> np.ndarray:
    """Indices of the rows with the largest ``height`` among those sharing a key (ties: the
    last row), one per distinct key, in increasing key order."""
    keys = np.asarray(keys, dtype=np.int64)
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(len(keys)), np.asarray(height), keys))
    k = keys[order]
    last = np.ones(len(k), dtype=bool)
    last[:-1] = k[1:] != k[:-1]
    return order[last]


def points_raster(panel: BevPanel, xyz: np.ndarray, rgb: np.ndarray, image: np.ndarray | None = None,
                  dot: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Draw points (N, 3) metres with colours (N, 3) into the panel's raster, the highest point
    of each pixel on top; ``dot`` > 1 draws each point as a dot x dot square (centred).
    Returns (raster (size, size, 3), covered (size, size) bool)."""
    image = blank(panel) if image is None else image
    covered = np.zeros((panel.size, panel.size), dtype=bool)
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    row, col, inside = panel.raster_index(xyz[:, :2])
    row, col, z, rgb = row[inside], col[inside], xyz[inside, 2], np.asarray(rgb)[inside]
    if dot > 1:  # grow each point into a square; the same height rule decides overlaps
        off = np.arange(dot) - (dot - 1) // 2
        dr, dc = (a.ravel() for a in np.meshgrid(off, off, indexing="ij"))
        row = (row[:, None] + dr[None]).ravel()
        col = (col[:, None] + dc[None]).ravel()
        z = np.repeat(z, len(dr))
        rgb = np.repeat(rgb, len(dr), axis=0)
        ok = (row >= 0) & (row < panel.size) & (col >= 0) & (col < panel.size)
        row, col, z, rgb = row[ok], col[ok], z[ok], rgb[ok]
    top = top_per_key(row * panel.size + col, z)
    image[row[top], col[top]] = rgb[top]
    covered[row[top], col[top]] = True
    return image, covered


def column_top(coords_zyx: np.ndarray, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """For voxels (V, 3) z, y, x on a grid of ``shape_zyx``: a (ny, nx) int64 array with the
    index of the highest voxel of each column, -1 for empty columns."""
    c = np.asarray(coords_zyx, dtype=np.int64).reshape(-1, 3)
    _, ny, nx = shape_zyx
    out = np.full((ny, nx), -1, dtype=np.int64)
    top = top_per_key(c[:, 1] * nx + c[:, 2], c[:, 0])
    out[c[top, 1], c[top, 2]] = top
    return out


def grid_raster(panel: BevPanel, cell_rgb: np.ndarray, cell_on: np.ndarray, origin_xy: tuple[float, float],
                cell_xy: tuple[float, float], image: np.ndarray | None = None) -> np.ndarray:
    """Paint a BEV grid into the panel: ``cell_rgb`` (ny, nx, 3) colours of the cells whose
    ``cell_on`` (ny, nx) is True; cell (j, i) covers x in [ox + i cx, ox + (i+1) cx), y likewise.
    Each pixel takes the cell under its centre."""
    image = blank(panel) if image is None else image
    ny, nx = cell_on.shape
    xs, ys = panel.pixel_centres()
    ci = np.floor((xs - origin_xy[0]) / cell_xy[0]).astype(np.int64)  # (size,) per column
    cj = np.floor((ys - origin_xy[1]) / cell_xy[1]).astype(np.int64)  # (size,) per row
    okc, okr = (ci >= 0) & (ci < nx), (cj >= 0) & (cj < ny)
    jj, ii = np.meshgrid(np.clip(cj, 0, ny - 1), np.clip(ci, 0, nx - 1), indexing="ij")
    on = cell_on[jj, ii] & okr[:, None] & okc[None, :]
    image[on] = cell_rgb[jj[on], ii[on]]
    return image
