"""Semantic occupancy on the OpenOccupancy grid, from the scene's exact geometry.

The grid is the keyframe LiDAR frame's [-51.2, -51.2, -5, 51.2, 51.2, 3] m at
0.2 m (512 x 512 x 40). A voxel is occupied where a surface passes through it: the
ground (z = 0, or a sidewalk top) and the faces of every box, sampled densely enough
that no voxel a face crosses is skipped. Labels are the 16 lidarseg classes; where
several surfaces share a voxel, objects win over static structure over the ground.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpicture.synth import portable as pm
from gpicture.synth.raycast import Boxes
from gpicture.synth.taxonomy import KIND_TO_LIDARSEG16


@dataclass(frozen=True)
class OccupancyGrid:
    """An axis-aligned grid in the LiDAR frame."""

    lo: tuple[float, float, float] = (-51.2, -51.2, -5.0)
    hi: tuple[float, float, float] = (51.2, 51.2, 3.0)
    voxel: float = 0.2

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        return tuple(round((h - l) / self.voxel) for l, h in zip(self.lo, self.hi, strict=True))  # type: ignore[return-value]


def _face_samples(boxes: Boxes, spacing: float, z_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Points on the faces of every box, at most `spacing` apart, within world heights
    `z_range`. Boxes are cut to that range (a cut face is not a surface and is skipped),
    and bottom faces resting on the ground are left to the ground. Returns (P, 3) world
    points and the (P,) box index of each."""
    m = len(boxes)
    if m == 0:
        return np.zeros((0, 3)), np.zeros(0, np.int64)
    bottom = boxes.center[:, 2] - boxes.half[:, 2]
    top = boxes.center[:, 2] + boxes.half[:, 2]
    zb, zt = np.maximum(bottom, z_range[0]), np.minimum(top, z_range[1])
    keep = zt > zb
    boxes = Boxes(
        np.column_stack([boxes.center[:, :2], (zb + zt) / 2])[keep],
        np.column_stack([boxes.half[:, :2], (zt - zb) / 2])[keep],
        boxes.yaw[keep],
    )
    kept = np.nonzero(keep)[0]
    m = len(kept)
    h = boxes.half
    face_on = np.ones((m, 6), dtype=bool)
    face_on[:, 4] = top[kept] <= z_range[1]  # top face is real, not a cut
    face_on[:, 5] = (bottom[kept] >= z_range[0]) & (bottom[kept] > 0.3)
    # Faces: axis a fixed at +-h[a]; the other two axes u, v span the face.
    axes = np.array([[0, 1, 2], [0, 1, 2], [1, 0, 2], [1, 0, 2], [2, 0, 1], [2, 0, 1]])
    signs = np.array([1, -1, 1, -1, 1, -1], dtype=np.float64)
    nu = np.ceil(2 * h[:, axes[:, 1]] / spacing).astype(np.int64) + 1  # (M, 6)
    nv = np.ceil(2 * h[:, axes[:, 2]] / spacing).astype(np.int64) + 1
    per = (nu * nv * face_on).ravel()  # (M * 6,)
    face_box = np.repeat(np.arange(m), 6)
    face_id = np.tile(np.arange(6), m)
    k = np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per)
    fb, fi = np.repeat(face_box, per), np.repeat(face_id, per)
    nv_r = np.repeat(nv.ravel(), per)
    nu_r = np.repeat(nu.ravel(), per)
    iu, iv = k // nv_r, k % nv_r
    a, ua, va = axes[fi, 0], axes[fi, 1], axes[fi, 2]
    hb = h[fb]
    local = np.zeros((len(k), 3))
    rows = np.arange(len(k))
    local[rows, a] = signs[fi] * hb[rows, a]
    local[rows, ua] = -hb[rows, ua] + 2 * hb[rows, ua] * iu / np.maximum(nu_r - 1, 1)
    local[rows, va] = -hb[rows, va] + 2 * hb[rows, va] * iv / np.maximum(nv_r - 1, 1)
    box_sin, box_cos = pm.sincos(boxes.yaw)
    c, s = box_cos[fb], box_sin[fb]
    world = boxes.center[fb] + np.column_stack(
        [local[:, 0] * c - local[:, 1] * s, local[:, 0] * s + local[:, 1] * c, local[:, 2]]
    )
    return world, kept[fb]


def occupancy(
    boxes: Boxes,
    box_kind: np.ndarray,
    box_priority: np.ndarray,
    ground_kind_fn,
    ground_height_fn,
    world_from_sensor: np.ndarray,
    grid: OccupancyGrid = OccupancyGrid(),
) -> np.ndarray:
    """Occupied voxels as (M, 4) int64 rows (z, y, x, label) in the LiDAR frame grid."""
    sensor_from_world = pm.rigid_inverse(world_from_sensor)
    nx, ny, nz = grid.shape_xyz
    lo = np.asarray(grid.lo)
    radius = pm.hypot(grid.hi[0] - grid.lo[0], grid.hi[1] - grid.lo[1]) / 2
    near = pm.norm(boxes.center[:, :2] - world_from_sensor[:2, 3], axis=1) - pm.norm(boxes.half[:, :2], axis=1) < radius
    idx = np.nonzero(near)[0]
    sub = Boxes(boxes.center[idx], boxes.half[idx], boxes.yaw[idx])
    # World heights the grid can reach (the sensor may pitch a little: keep a margin).
    corners = np.array([[x, y, z, 1.0] for x in (grid.lo[0], grid.hi[0]) for y in (grid.lo[1], grid.hi[1])
                        for z in (grid.lo[2], grid.hi[2])])
    zw = pm.matmul(world_from_sensor, corners.T)[2]
    pts, owner = _face_samples(sub, grid.voxel * 0.7, (float(zw.min()) - 0.2, float(zw.max()) + 0.2))
    labels = [KIND_TO_LIDARSEG16[box_kind[idx[owner]]].astype(np.int64)]
    prio = [box_priority[idx[owner]]]
    cloud = [pts]
    # Ground: one sample per grid column (denser than the grid so tilted poses leave no holes).
    step = grid.voxel * 0.7
    gx, gy = np.meshgrid(np.arange(grid.lo[0], grid.hi[0], step) + step / 2,
                         np.arange(grid.lo[1], grid.hi[1], step) + step / 2, indexing="ij")
    g_sensor = np.column_stack([gx.ravel(), gy.ravel(), np.zeros(gx.size), np.ones(gx.size)])
    g_world = pm.matmul(world_from_sensor, g_sensor.T).T[:, :3]
    g_world[:, 2] = ground_height_fn(g_world[:, 0], g_world[:, 1])
    cloud.append(g_world)
    labels.append(KIND_TO_LIDARSEG16[ground_kind_fn(g_world[:, 0], g_world[:, 1])].astype(np.int64))
    prio.append(np.zeros(len(g_world), np.int64))
    # Paint a dense label volume in priority order: ground, then structure, then objects.
    vol = np.zeros(nx * ny * nz, dtype=np.uint8)
    pts = np.concatenate(cloud)
    lab = np.concatenate(labels)
    pri = np.concatenate(prio)
    p = pm.apply(pts, sensor_from_world[:3, :3], sensor_from_world[:3, 3])
    v = np.floor((p - lo) / grid.voxel).astype(np.int64)
    ok = (v >= 0).all(1) & (v[:, 0] < nx) & (v[:, 1] < ny) & (v[:, 2] < nz) & (lab > 0)
    v, lab, pri = v[ok], lab[ok], pri[ok]
    key = (v[:, 2] * ny + v[:, 1]) * nx + v[:, 0]
    for level in np.unique(pri):
        sel = pri == level
        vol[key[sel]] = lab[sel]
    key = np.flatnonzero(vol)
    z, rem = np.divmod(key, ny * nx)
    y, x = np.divmod(rem, nx)
    return np.column_stack([z, y, x, vol[key]]).astype(np.int64)
