"""Class taxonomies shared by the synthetic world and the dataset writers.

nuScenes lidarseg has 32 raw classes (``category.json`` with an ``index``); its
detection benchmark uses 10 classes; Waymo has 23 segmentation classes and four
box types. Every surface the world can contain is a *kind* with one class in each
taxonomy and a material (reflectivity, transparency).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# nuScenes lidarseg raw classes, in index order (category.json "index").
NUSCENES_CATEGORIES: tuple[str, ...] = (
    "noise",
    "animal",
    "human.pedestrian.adult",
    "human.pedestrian.child",
    "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer",
    "human.pedestrian.stroller",
    "human.pedestrian.wheelchair",
    "movable_object.barrier",
    "movable_object.debris",
    "movable_object.pushable_pullable",
    "movable_object.trafficcone",
    "static_object.bicycle_rack",
    "vehicle.bicycle",
    "vehicle.bus.bendy",
    "vehicle.bus.rigid",
    "vehicle.car",
    "vehicle.construction",
    "vehicle.emergency.ambulance",
    "vehicle.emergency.police",
    "vehicle.motorcycle",
    "vehicle.trailer",
    "vehicle.truck",
    "flat.driveable_surface",
    "flat.other",
    "flat.sidewalk",
    "flat.terrain",
    "static.manmade",
    "static.other",
    "static.vegetation",
    "vehicle.ego",
)
NUSCENES_INDEX = {name: i for i, name in enumerate(NUSCENES_CATEGORIES)}

NUSCENES_ATTRIBUTES: tuple[str, ...] = (
    "vehicle.moving",
    "vehicle.stopped",
    "vehicle.parked",
    "cycle.with_rider",
    "cycle.without_rider",
    "pedestrian.sitting_lying_down",
    "pedestrian.standing",
    "pedestrian.moving",
)
# visibility token -> level (fraction of the object visible in the sensors)
NUSCENES_VISIBILITY: dict[str, str] = {"1": "v0-40", "2": "v40-60", "3": "v60-80", "4": "v80-100"}

# Waymo segmentation classes (segmentation.proto Segmentation.Type), in value order.
WAYMO_SEG_CLASSES: tuple[str, ...] = (
    "UNDEFINED", "CAR", "TRUCK", "BUS", "OTHER_VEHICLE", "MOTORCYCLIST", "BICYCLIST",
    "PEDESTRIAN", "SIGN", "TRAFFIC_LIGHT", "POLE", "CONSTRUCTION_CONE", "BICYCLE",
    "MOTORCYCLE", "BUILDING", "VEGETATION", "TREE_TRUNK", "CURB", "ROAD", "LANE_MARKER",
    "OTHER_GROUND", "WALKABLE", "SIDEWALK",
)
WAYMO_SEG = {name: i for i, name in enumerate(WAYMO_SEG_CLASSES)}
# Waymo box types (label.proto Label.Type)
WAYMO_TYPE_UNKNOWN, WAYMO_TYPE_VEHICLE, WAYMO_TYPE_PEDESTRIAN, WAYMO_TYPE_SIGN, WAYMO_TYPE_CYCLIST = 0, 1, 2, 3, 4


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


# The 16 nuScenes lidarseg evaluation classes (0 = ignored), as the devkit's
# LidarsegClassMapper maps the raw classes; OpenOccupancy uses the same indices.
LIDARSEG16: tuple[str, ...] = (
    "ignore", "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle",
    "pedestrian", "traffic_cone", "trailer", "truck", "driveable_surface", "other_flat",
    "sidewalk", "terrain", "manmade", "vegetation",
)
_RAW_TO_16 = {
    "movable_object.barrier": "barrier", "vehicle.bicycle": "bicycle", "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus", "vehicle.car": "car", "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle", "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian", "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian", "movable_object.trafficcone": "traffic_cone",
    "vehicle.trailer": "trailer", "vehicle.truck": "truck", "flat.driveable_surface": "driveable_surface",
    "flat.other": "other_flat", "flat.sidewalk": "sidewalk", "flat.terrain": "terrain",
    "static.manmade": "manmade", "static.vegetation": "vegetation",
}
NUSCENES_RAW_TO_16 = np.array(
    [LIDARSEG16.index(_RAW_TO_16.get(name, "ignore")) for name in NUSCENES_CATEGORIES], dtype=np.uint8
)
KIND_TO_LIDARSEG16 = NUSCENES_RAW_TO_16[KIND_TO_NUSCENES]
