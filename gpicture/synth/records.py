"""What the simulator hands to the dataset writers: plain, typed records.

Frames and units: metres, radians, microseconds. ``world`` is the scene's global
frame (z up); ``ego``/``vehicle`` is the car's frame (x forward, y left, z up, origin
on the ground under the rear axle as in both datasets); ``sensor`` is the LiDAR's.
Poses are 4x4 float64 matrices ``a_from_b`` mapping b-frame points into frame a.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ObjectStates:
    """Every annotated object of a scene at one instant, in the world frame."""

    instance_id: np.ndarray  # (K,) int64, unique within the scene and stable over time
    class_name: np.ndarray  # (K,) str, nuScenes detection class (taxonomy.OBJECT_CLASSES name)
    center: np.ndarray  # (K, 3) float64 box centre, world frame, m
    size: np.ndarray  # (K, 3) float64 length, width, height (l along heading), m
    yaw: np.ndarray  # (K,) float64 heading about world z, rad
    velocity: np.ndarray  # (K, 3) float64 world frame, m/s
    attribute: np.ndarray  # (K,) str nuScenes attribute name, "" for none
    num_points: np.ndarray  # (K,) int64 points of this frame's LiDAR inside the box (first returns)
    visibility: np.ndarray  # (K,) int64 nuScenes visibility token 1..4 (fraction of the object not occluded)

    def __len__(self) -> int:
        return len(self.instance_id)


@dataclass
class NuscenesSweep:
    """One LIDAR_TOP sweep (20 Hz) of a nuScenes-like scene."""

    timestamp_us: int
    is_key_frame: bool
    world_from_ego: np.ndarray  # (4, 4) ego pose at the sweep's timestamp
    points: np.ndarray  # (N, 5) float32 x, y, z (sensor frame, m), intensity (0..255), ring index (0..31)
    lidarseg: np.ndarray  # (N,) uint8 raw nuScenes lidarseg class (taxonomy.NUSCENES_CATEGORIES)
    objects: ObjectStates | None = None  # keyframes only
    occupancy: np.ndarray | None = None  # keyframes only: (M, 4) int64 rows (z, y, x, label) on the OpenOccupancy grid
    instance: np.ndarray | None = None  # (N,) int64 object instance id of each point, 0 for stuff (not written)


@dataclass
class NuscenesScene:
    """A generated nuScenes-like scene: its official name, and all its sweeps in time order."""

    name: str  # an official scene name (e.g. "scene-0061") so the devkit splits place it
    description: str
    location: str  # one of the four nuScenes map locations
    ego_from_sensor: np.ndarray  # (4, 4) LIDAR_TOP calibration
    sweeps: list[NuscenesSweep] = field(default_factory=list)


@dataclass
class WaymoReturn:
    """One return of one laser, in Waymo's range-image layout.

    Row 0 is the highest beam; column c looks along vehicle-frame azimuth
    ``(2 * (W - c - 0.5) / W - 1) * pi`` (the official convention).
    """

    range_image: np.ndarray  # (H, W, 4) float32 range (m, <= 0: no return), intensity, elongation, is_in_nlz (1 / -1)
    segmentation: np.ndarray | None  # (H, W, 2) int32 instance id, Waymo seg class; TOP on labelled frames only


@dataclass
class WaymoLaser:
    """One lidar of a Waymo frame: calibration, both returns, and the TOP pixel poses."""

    name: int  # dataset_pb2.LaserName value (1 TOP, 2 FRONT, 3 SIDE_LEFT, 4 SIDE_RIGHT, 5 REAR)
    vehicle_from_sensor: np.ndarray  # (4, 4) extrinsic
    beam_inclinations: np.ndarray | None  # (H,) ascending, rad; None for uniform beams
    inclination_min: float  # rad
    inclination_max: float  # rad
    returns: tuple[WaymoReturn, WaymoReturn]
    pixel_pose: np.ndarray | None  # (H, W, 6) float32 roll, pitch, yaw, x, y, z (world_from_vehicle per pixel); TOP only
    points: tuple[np.ndarray, np.ndarray]  # per return: (N, 3) float32 the simulated returns, vehicle frame, row-major pixel order


@dataclass
class WaymoFrame:
    """One 10 Hz frame of a Waymo-like segment."""

    context_name: str  # the segment name
    timestamp_us: int
    world_from_vehicle: np.ndarray  # (4, 4) frame pose
    lasers: list[WaymoLaser]
    objects: ObjectStates  # num_points counts points of all lidars (first return) inside each box
    waymo_type: np.ndarray  # (K,) int label_pb2.Label.Type per object (0: not labelled in Waymo)
    difficulty: np.ndarray  # (K,) int 1 (LEVEL_1) or 2 (LEVEL_2)
    has_segmentation: bool
