"""The datasets' own class taxonomies, as their devkits and protos define them.

nuScenes lidarseg has 32 raw classes (``category.json`` with an ``index``), mapped to 16
evaluation classes; its detection benchmark uses 10 classes; Waymo has 23 segmentation
classes and its box types. The synthetic world (``gpicture.synth``) labels its surfaces in
these taxonomies; readers, the store and the tasks read them from here.
"""

from __future__ import annotations

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

# Waymo box types (label.proto Label.Type) by value, as the store's box names
WAYMO_BOX_TYPES: tuple[str, ...] = ("TYPE_UNKNOWN", "TYPE_VEHICLE", "TYPE_PEDESTRIAN", "TYPE_SIGN", "TYPE_CYCLIST")
