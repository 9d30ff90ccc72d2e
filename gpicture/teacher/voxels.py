"""The teacher's input convention: how LiDAR points become Res16UNet34C input voxels.

One function for every user of the teacher (the feature cache, the stand-in's training,
the probes), so a checkpoint always sees the convention it was trained with.

Seal's released nuScenes weights come from SLidR's pre-training loader (valeoai/SLidR,
``pretrain/dataloader_nuscenes.py``; ``config/slidr_minkunet.yaml``: ``cylindrical_coordinates:
True``, ``voxel_size: 0.1``; ``config/slidr_nuscenes.yaml``: ``use_intensity: True``; Seal's
own pre-training code is not public and builds on it): keyframe LIDAR_TOP points only,
**cylindrical** voxels (radius / 0.1 m, azimuth in 1 degree bins, z / 0.1 m), and the
**raw** intensity (0..255, no scaling anywhere) as the single input channel. SLidR keeps
the intensity of the one point ``sparse_quantize`` picks per voxel (which one is not
specified); here it is the voxel's mean, which is deterministic. GPICTURE feeds the same
nuScenes weights ``tanh(intensity)`` on Waymo (its Waymo loader squashes intensity and
elongation with tanh). These are the ``teacher.*`` defaults in params.yaml;
``TeacherConfig``'s own defaults (Cartesian 0.2 m, scale 1) are kept for the API and its
parity tests.

Frames: points in the LiDAR / vehicle frame of the store, metres; azimuth in degrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COORDINATES = ("cartesian", "cylindrical")
TRANSFORMS = ("identity", "tanh")


@dataclass(frozen=True)
class TeacherVoxels:
    """The teacher's quantized input for one point cloud.

    ``coords`` int32 (T, 3) voxel indices (x, y, z or radius, azimuth, z bins), unique rows;
    ``features`` float32 (T, 1) mean input channel per voxel; ``point_voxel`` int64 (N,)
    the teacher voxel of each input point (rows of ``coords``).
    """

    coords: np.ndarray
    features: np.ndarray
    point_voxel: np.ndarray


def quantize_points(points: np.ndarray, voxel_size: float, coordinates: str = "cartesian",
                    angle_bin_deg: float = 1.0) -> np.ndarray:
    """Integer voxel index (N, 3) int64 of each point, Cartesian or cylindrical."""
    if coordinates == "cartesian":
        return np.floor(points / voxel_size).astype(np.int64)
    if coordinates == "cylindrical":
        rho = np.hypot(points[:, 0], points[:, 1])
        phi = np.degrees(np.arctan2(points[:, 1], points[:, 0]))
        return np.column_stack([np.floor(rho / voxel_size), np.floor(phi / angle_bin_deg),
                                np.floor(points[:, 2] / voxel_size)]).astype(np.int64)
    raise ValueError(f"teacher coordinates must be one of {COORDINATES}, got {coordinates!r}")


def input_channel(intensity: np.ndarray, scale: float = 1.0, transform: str = "identity") -> np.ndarray:
    """The teacher's input channel of each point: ``transform(intensity * scale)`` (float64)."""
    x = np.asarray(intensity, dtype=np.float64) * scale
    if transform == "identity":
        return x
    if transform == "tanh":
        return np.tanh(x)
    raise ValueError(f"teacher input transform must be one of {TRANSFORMS}, got {transform!r}")


def teacher_voxels(points: np.ndarray, channel: np.ndarray, voxel_size: float, coordinates: str = "cartesian",
                   angle_bin_deg: float = 1.0) -> TeacherVoxels:
    """Quantize points (N, 3) with their input channel (N,) into unique teacher voxels
    holding the mean channel (SLidR's sparse_quantize + mean of the voxel's points)."""
    q = quantize_points(points, voxel_size, coordinates, angle_bin_deg)
    uniq, inv = np.unique(q, axis=0, return_inverse=True)
    inv = inv.ravel()
    n = len(uniq)
    count = np.maximum(np.bincount(inv, minlength=n), 1)
    mean = np.bincount(inv, weights=channel, minlength=n) / count
    return TeacherVoxels(uniq.astype(np.int32), mean.astype(np.float32)[:, None], inv.astype(np.int64))
