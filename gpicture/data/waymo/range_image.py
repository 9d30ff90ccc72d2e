"""Waymo range images in numpy: the official geometry conventions (the field codecs are in
:mod:`gpicture.data.waymo.matrix_codec`).

Geometry (``waymo_open_dataset/utils/range_image_utils.py`` and ``frame_utils.py``):

* Row 0 of a range image is the highest beam. ``LaserCalibration.beam_inclinations``
  are stored ascending (lowest beam first), so row ``i`` uses
  ``beam_inclinations[H - 1 - i]``; without them, the beams are uniform between
  ``beam_inclination_min`` and ``beam_inclination_max`` (pixel centres), again reversed.
* Column ``c`` of a width-``W`` image has the sensor-frame azimuth
  ``((W - c - 0.5) / W * 2 - 1) * pi - atan2(R[1, 0], R[0, 0])``, ``R`` the rotation of
  the extrinsic ``vehicle_from_sensor``: the columns sweep the *vehicle-frame*
  azimuth from +pi (column 0) down to -pi, whatever the lidar's mounting yaw.
* A pixel ``(range, azimuth, inclination)`` is the sensor-frame point
  ``range * (cos(inc) cos(az), cos(inc) sin(az), sin(inc))``, taken into the vehicle
  frame by the extrinsic. With a pixel pose (TOP only: the ``world_from_vehicle``
  pose at the instant the pixel was fired, as roll, pitch, yaw, x, y, z), the point is
  taken into the world by the pixel pose and back into the vehicle frame of the frame
  pose (``Frame.pose``), which undoes the rolling shutter.

Units: metres and radians throughout; poses are 4x4 ``a_from_b`` matrices.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def uniform_inclinations(inclination_min: float, inclination_max: float, height: int) -> np.ndarray:
    """Uniform beam inclinations (rad), ascending as stored (``compute_inclination``).

    Returns ``(H,)`` float64 ``min + (arange(H) + 0.5) / H * (max - min)``: beam 0 is
    the lowest. Reverse it for row order.
    """
    diff = float(inclination_max) - float(inclination_min)
    return (np.arange(height, dtype=np.float64) + 0.5) / float(height) * diff + float(inclination_min)


def inclinations(laser_calibration_or_values: Any, height: int) -> np.ndarray:
    """Per-row inclination (rad) of a range image of ``height`` rows; row 0 = highest beam.

    Args:
        laser_calibration_or_values: a ``dataset_pb2.LaserCalibration``, a
            ``gpicture.synth.records.WaymoLaser`` (``beam_inclinations`` or None,
            ``inclination_min``/``inclination_max``), or the ascending beam
            inclinations themselves (array-like of length ``height``).
        height: number of rows H.

    Returns:
        ``(H,)`` float64: the beam inclinations reversed when there are any, else the
        uniform ones of the calibration's min/max, reversed.
    """
    c = laser_calibration_or_values
    if hasattr(c, "beam_inclination_min"):  # dataset_pb2.LaserCalibration
        values, lo, hi = list(c.beam_inclinations), c.beam_inclination_min, c.beam_inclination_max
    elif hasattr(c, "inclination_min"):  # WaymoLaser
        values, lo, hi = c.beam_inclinations, c.inclination_min, c.inclination_max
    else:
        values, lo, hi = c, None, None
    values = np.asarray([] if values is None else values, dtype=np.float64).reshape(-1)
    if values.size:
        if values.size != height:
            raise ValueError(f"{values.size} beam inclinations for a range image of {height} rows")
        return values[::-1].copy()
    if lo is None:
        raise ValueError("no beam inclinations given")
    return uniform_inclinations(lo, hi, height)[::-1].copy()


def azimuths(width: int, vehicle_from_sensor: np.ndarray) -> np.ndarray:
    """Sensor-frame azimuth (rad) of each column of a range image of ``width`` columns.

    ``((arange(W, 0, -1) - 0.5) / W * 2 - 1) * pi - atan2(R[1, 0], R[0, 0])`` with ``R``
    the extrinsic's rotation (``compute_range_image_polar``). Returns ``(W,)`` float64.
    """
    e = np.asarray(vehicle_from_sensor, dtype=np.float64)
    az_correction = np.arctan2(e[1, 0], e[0, 0])
    ratios = (np.arange(width, 0, -1, dtype=np.float64) - 0.5) / float(width)
    return (ratios * 2.0 - 1.0) * np.pi - az_correction


def rotation_matrices(roll: np.ndarray, pitch: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """``Rz(yaw) @ Ry(pitch) @ Rx(roll)`` (``transform_utils.get_rotation_matrix``): ``(..., 3, 3)`` float64."""
    roll, pitch, yaw = (np.asarray(a, dtype=np.float64) for a in (roll, pitch, yaw))
    cr, sr = np.cos(roll), np.sin(roll)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(yaw), np.sin(yaw)
    r = np.empty(np.broadcast(roll, pitch, yaw).shape + (3, 3), dtype=np.float64)
    r[..., 0, 0] = cy * cp
    r[..., 0, 1] = cy * sp * sr - sy * cr
    r[..., 0, 2] = cy * sp * cr + sy * sr
    r[..., 1, 0] = sy * cp
    r[..., 1, 1] = sy * sp * sr + cy * cr
    r[..., 1, 2] = sy * sp * cr - cy * sr
    r[..., 2, 0] = -sp
    r[..., 2, 1] = cp * sr
    r[..., 2, 2] = cp * cr
    return r


def pose_matrices(pixel_pose: np.ndarray) -> np.ndarray:
    """4x4 ``world_from_vehicle`` matrices of pixel poses.

    Args:
        pixel_pose: ``(..., 6)`` roll, pitch, yaw (rad), x, y, z (m), e.g. ``(H, W, 6)``.

    Returns:
        ``(..., 4, 4)`` float64 with rotation ``Rz(yaw) Ry(pitch) Rx(roll)``.
    """
    p = np.asarray(pixel_pose, dtype=np.float64)
    out = np.zeros(p.shape[:-1] + (4, 4), dtype=np.float64)
    out[..., :3, :3] = rotation_matrices(p[..., 0], p[..., 1], p[..., 2])
    out[..., :3, 3] = p[..., 3:6]
    out[..., 3, 3] = 1.0
    return out


def range_image_to_points(
    range_image: np.ndarray,
    vehicle_from_sensor: np.ndarray,
    inclination: np.ndarray,
    pixel_pose: np.ndarray | None = None,
    world_from_vehicle: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Points of the valid pixels of a range image, as ``convert_range_image_to_point_cloud``.

    Args:
        range_image: ``(H, W)`` ranges (m) or ``(H, W, C)`` with the range in channel 0.
        vehicle_from_sensor: ``(4, 4)`` the lidar's extrinsic.
        inclination: ``(H,)`` per-row inclination (rad), row 0 = highest (``inclinations``).
        pixel_pose: optional ``(H, W, 6)`` per-pixel ``world_from_vehicle`` (roll, pitch,
            yaw, x, y, z); the official reader uses it for TOP only.
        world_from_vehicle: ``(4, 4)`` frame pose; required with ``pixel_pose``.

    Returns:
        ``points``: ``(N, 3)`` float32 vehicle frame (m) of the pixels with range > 0, in
        row-major pixel order; ``mask``: ``(H, W)`` bool, those pixels. Computed in float64.
    """
    ri = np.asarray(range_image)
    if ri.ndim == 3:
        ri = ri[..., 0]
    if ri.ndim != 2:
        raise ValueError(f"range image of shape {np.shape(range_image)}, expected (H, W) or (H, W, C)")
    height, width = ri.shape
    inclination = np.asarray(inclination, dtype=np.float64).reshape(-1)
    if inclination.shape != (height,):
        raise ValueError(f"{inclination.size} inclinations for {height} rows")
    extrinsic = np.asarray(vehicle_from_sensor, dtype=np.float64)

    mask = ri > 0
    rows, cols = np.nonzero(mask)
    rng = ri[rows, cols].astype(np.float64)
    az = azimuths(width, extrinsic)[cols]
    inc = inclination[rows]
    cos_inc = np.cos(inc)
    sensor = np.stack([np.cos(az) * cos_inc * rng, np.sin(az) * cos_inc * rng, np.sin(inc) * rng], axis=-1)
    points = sensor @ extrinsic[:3, :3].T + extrinsic[:3, 3]

    if pixel_pose is not None:
        if world_from_vehicle is None:
            raise ValueError("world_from_vehicle (the frame pose) must be given with pixel_pose")
        pp = np.asarray(pixel_pose, dtype=np.float64)
        if pp.shape != (height, width, 6):
            raise ValueError(f"pixel pose of shape {pp.shape}, expected {(height, width, 6)}")
        pp = pp[rows, cols]
        world = np.einsum("nij,nj->ni", rotation_matrices(pp[:, 0], pp[:, 1], pp[:, 2]), points) + pp[:, 3:6]
        vehicle_from_world = np.linalg.inv(np.asarray(world_from_vehicle, dtype=np.float64))
        points = world @ vehicle_from_world[:3, :3].T + vehicle_from_world[:3, 3]
    return points.astype(np.float32), mask
