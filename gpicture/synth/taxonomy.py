"""The synthetic world's kinds of surface and annotated object classes.

Every surface the world can contain is a *kind* with one class in each dataset taxonomy
(:mod:`gpicture.data.taxonomy`) and a material (reflectivity, transparency).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpicture.data.taxonomy import (
    NUSCENES_INDEX,
    NUSCENES_RAW_TO_16,
    WAYMO_SEG,
    WAYMO_TYPE_CYCLIST,
    WAYMO_TYPE_PEDESTRIAN,
    WAYMO_TYPE_UNKNOWN,
    WAYMO_TYPE_VEHICLE,
)


@dataclass(frozen=True)
class Kind:
    """A kind of surface in the world."""

    name: str
    nuscenes: str  # raw lidarseg category
    waymo_seg: str  # Waymo segmentation class
    reflectivity: float  # 0..1, drives intensity
    transparency: float = 0.0  # probability a ray passes the first surface (vegetation)


# Reflectivities are calibrated on real nuScenes LIDAR_TOP intensities (../shared/realdata, 11 keyframes):
# each kind's median intensity matches the real median of its lidarseg class where the real frames hold
# over 1,000 points of it (driveable surface 9, sidewalk 19, terrain 34, manmade 27, vegetation 13,
# barrier 42, pedestrian 35, construction vehicle 16; car: the mean, 24, as its real distribution is
# bimodal, dark body and bright plates); the others scale with their nearest calibrated kind.
# benchmarks/synth_realism.py prints the comparison (README, "Real data").
KINDS: tuple[Kind, ...] = (
    # ground and static world
    Kind("road", "flat.driveable_surface", "ROAD", 0.064),
    Kind("lane_marker", "flat.driveable_surface", "LANE_MARKER", 0.4),
    Kind("sidewalk", "flat.sidewalk", "SIDEWALK", 0.165),
    Kind("curb", "flat.sidewalk", "CURB", 0.2),
    Kind("terrain", "flat.terrain", "OTHER_GROUND", 0.34),
    Kind("median", "flat.other", "WALKABLE", 0.15),
    Kind("building", "static.manmade", "BUILDING", 0.143),
    Kind("pole", "static.manmade", "POLE", 0.184),
    Kind("sign", "static.manmade", "SIGN", 0.6),
    Kind("vegetation", "static.vegetation", "VEGETATION", 0.066, transparency=0.35),
    Kind("trunk", "static.vegetation", "TREE_TRUNK", 0.055),
    # annotated objects (one per nuScenes detection class)
    Kind("car", "vehicle.car", "CAR", 0.115),
    Kind("truck", "vehicle.truck", "TRUCK", 0.16),
    Kind("bus", "vehicle.bus.rigid", "BUS", 0.16),
    Kind("trailer", "vehicle.trailer", "OTHER_VEHICLE", 0.15),
    Kind("construction_vehicle", "vehicle.construction", "OTHER_VEHICLE", 0.085),
    Kind("pedestrian", "human.pedestrian.adult", "PEDESTRIAN", 0.16),
    Kind("motorcycle", "vehicle.motorcycle", "MOTORCYCLE", 0.115),
    Kind("bicycle", "vehicle.bicycle", "BICYCLE", 0.07),
    Kind("motorcyclist", "vehicle.motorcycle", "MOTORCYCLIST", 0.16),
    Kind("bicyclist", "vehicle.bicycle", "BICYCLIST", 0.16),
    Kind("traffic_cone", "movable_object.trafficcone", "CONSTRUCTION_CONE", 0.2),
    Kind("barrier", "movable_object.barrier", "CONSTRUCTION_CONE", 0.26),
)
KIND_INDEX = {k.name: i for i, k in enumerate(KINDS)}

# Lookup tables by kind index (vectorized labelling of points).
KIND_TO_NUSCENES = np.array([NUSCENES_INDEX[k.nuscenes] for k in KINDS], dtype=np.uint8)
KIND_TO_WAYMO_SEG = np.array([WAYMO_SEG[k.waymo_seg] for k in KINDS], dtype=np.int32)
KIND_REFLECTIVITY = np.array([k.reflectivity for k in KINDS], dtype=np.float32)
KIND_TRANSPARENCY = np.array([k.transparency for k in KINDS], dtype=np.float32)


@dataclass(frozen=True)
class ObjectClass:
    """An annotated object class: its nuScenes category, Waymo box type, and the
    size statistics (length, width, height in metres: mean and std) it is drawn from,
    after the nuScenes per-class box statistics."""

    name: str  # nuScenes detection class name
    category: str  # nuScenes category
    waymo_type: int
    size_mean: tuple[float, float, float]  # l, w, h
    size_std: tuple[float, float, float]


OBJECT_CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass("car", "vehicle.car", WAYMO_TYPE_VEHICLE, (4.63, 1.96, 1.74), (0.46, 0.19, 0.25)),
    ObjectClass("truck", "vehicle.truck", WAYMO_TYPE_VEHICLE, (6.94, 2.52, 2.85), (1.9, 0.35, 0.6)),
    ObjectClass("bus", "vehicle.bus.rigid", WAYMO_TYPE_VEHICLE, (11.19, 2.94, 3.47), (1.5, 0.15, 0.25)),
    ObjectClass("trailer", "vehicle.trailer", WAYMO_TYPE_VEHICLE, (12.28, 2.90, 3.87), (2.5, 0.2, 0.35)),
    ObjectClass("construction_vehicle", "vehicle.construction", WAYMO_TYPE_VEHICLE, (6.37, 2.73, 3.19), (1.2, 0.3, 0.4)),
    ObjectClass("pedestrian", "human.pedestrian.adult", WAYMO_TYPE_PEDESTRIAN, (0.73, 0.67, 1.77), (0.15, 0.12, 0.16)),
    ObjectClass("motorcycle", "vehicle.motorcycle", WAYMO_TYPE_CYCLIST, (2.11, 0.77, 1.47), (0.2, 0.12, 0.15)),
    ObjectClass("bicycle", "vehicle.bicycle", WAYMO_TYPE_CYCLIST, (1.70, 0.60, 1.28), (0.15, 0.1, 0.15)),
    ObjectClass("traffic_cone", "movable_object.trafficcone", WAYMO_TYPE_UNKNOWN, (0.41, 0.41, 1.07), (0.06, 0.06, 0.1)),
    ObjectClass("barrier", "movable_object.barrier", WAYMO_TYPE_UNKNOWN, (0.48, 2.49, 0.98), (0.1, 0.35, 0.1)),
)
OBJECT_CLASS_INDEX = {c.name: i for i, c in enumerate(OBJECT_CLASSES)}


KIND_TO_LIDARSEG16 = NUSCENES_RAW_TO_16[KIND_TO_NUSCENES]
