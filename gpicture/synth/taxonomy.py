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


KINDS: tuple[Kind, ...] = (
    # ground and static world
    Kind("road", "flat.driveable_surface", "ROAD", 0.12),
    Kind("lane_marker", "flat.driveable_surface", "LANE_MARKER", 0.75),
    Kind("sidewalk", "flat.sidewalk", "SIDEWALK", 0.25),
    Kind("curb", "flat.sidewalk", "CURB", 0.3),
    Kind("terrain", "flat.terrain", "OTHER_GROUND", 0.2),
    Kind("median", "flat.other", "WALKABLE", 0.22),
    Kind("building", "static.manmade", "BUILDING", 0.35),
    Kind("pole", "static.manmade", "POLE", 0.45),
    Kind("sign", "static.manmade", "SIGN", 0.9),
    Kind("vegetation", "static.vegetation", "VEGETATION", 0.3, transparency=0.35),
    Kind("trunk", "static.vegetation", "TREE_TRUNK", 0.25),
    # annotated objects (one per nuScenes detection class)
    Kind("car", "vehicle.car", "CAR", 0.5),
    Kind("truck", "vehicle.truck", "TRUCK", 0.45),
    Kind("bus", "vehicle.bus.rigid", "BUS", 0.45),
    Kind("trailer", "vehicle.trailer", "OTHER_VEHICLE", 0.4),
    Kind("construction_vehicle", "vehicle.construction", "OTHER_VEHICLE", 0.55),
    Kind("pedestrian", "human.pedestrian.adult", "PEDESTRIAN", 0.3),
    Kind("motorcycle", "vehicle.motorcycle", "MOTORCYCLE", 0.5),
    Kind("bicycle", "vehicle.bicycle", "BICYCLE", 0.35),
    Kind("motorcyclist", "vehicle.motorcycle", "MOTORCYCLIST", 0.3),
    Kind("bicyclist", "vehicle.bicycle", "BICYCLIST", 0.3),
    Kind("traffic_cone", "movable_object.trafficcone", "CONSTRUCTION_CONE", 0.8),
    Kind("barrier", "movable_object.barrier", "CONSTRUCTION_CONE", 0.6),
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
