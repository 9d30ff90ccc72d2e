"""Canonical voxelization: the grid every later stage shares.

A point at (x, y, z) metres falls in voxel ``floor((p - lo) / voxel_size)``; the grid
spans the point-cloud range ``[x0, y0, z0, x1, y1, z1]``. Voxel coordinates are stored
(z, y, x), the sparse-convolution convention, sorted by their linear index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VoxelGrid:
    """A regular grid over the point-cloud range (metres, the points' frame)."""

    point_cloud_range: tuple[float, float, float, float, float, float]
    voxel_size: tuple[float, float, float]

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        lo, hi = np.asarray(self.point_cloud_range[:3]), np.asarray(self.point_cloud_range[3:])
        nx, ny, nz = np.round((hi - lo) / np.asarray(self.voxel_size)).astype(int)
        return int(nz), int(ny), int(nx)

    def validate(self) -> None:
        r, v = self.point_cloud_range, self.voxel_size
        if len(r) != 6 or len(v) != 3:
            raise ValueError(f"point_cloud_range needs 6 values and voxel_size 3, got {r} and {v}")
        if any(b <= a for a, b in zip(r[:3], r[3:], strict=True)) or any(s <= 0 for s in v):
            raise ValueError(f"empty point-cloud range {r} or non-positive voxel size {v}")

    def voxelize(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(voxel_coords (V, 3) int32 z, y, x sorted by linear index, point_voxel (N,) int32,
        -1 for points outside the range)."""
        lo = np.asarray(self.point_cloud_range[:3], dtype=np.float64)
        nz, ny, nx = self.shape_zyx
        ijk = np.floor((points.astype(np.float64) - lo) / np.asarray(self.voxel_size)).astype(np.int64)
        inside = (ijk >= 0).all(1) & (ijk[:, 0] < nx) & (ijk[:, 1] < ny) & (ijk[:, 2] < nz)
        linear = (ijk[inside, 2] * ny + ijk[inside, 1]) * nx + ijk[inside, 0]
        uniq, inverse = np.unique(linear, return_inverse=True)
        z, rem = np.divmod(uniq, ny * nx)
        y, x = np.divmod(rem, nx)
        point_voxel = np.full(len(points), -1, dtype=np.int32)
        point_voxel[inside] = inverse.astype(np.int32)
        return np.column_stack([z, y, x]).astype(np.int32), point_voxel
