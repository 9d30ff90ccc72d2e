"""Write simulated scenes in the real nuScenes on-disk format.

The output loads with the official devkit (``nuscenes.nuscenes.NuScenes``) and with
every tool built on it::

    root/
      <version>/*.json                      the 13 relational tables + lidarseg.json
      samples/LIDAR_TOP/<log>__LIDAR_TOP__<us>.pcd.bin   keyframes, float32 (N, 5)
      sweeps/LIDAR_TOP/<log>__LIDAR_TOP__<us>.pcd.bin    other sweeps
      lidarseg/<version>/<sd_token>_lidarseg.bin         uint8 (N,), keyframes only
      maps/<map_token>.png                  placeholder semantic-prior masks
      nuScenes-Occupancy/scene_<scene_token>/occupancy/<lidar_sd_token>.npy
                                            OpenOccupancy (M, 4) int16 rows z, y, x, label (indices < 512 and labels < 17 fit; 4x smaller than int64)

Conventions follow the released data:

* one ``calibrated_sensor`` per scene, one ``ego_pose`` per ``sample_data`` (sharing
  its token, as in the release);
* a non-keyframe sweep belongs to the *next* keyframe's sample (the devkit's
  ``get_boxes`` interpolates between ``sample.prev`` and ``sample``); sweeps after
  the last keyframe belong to the last sample;
* ``sample_annotation.size`` is ``[width, length, height]``;
* tokens are md5 hex digests of descriptive strings, so the same input always
  writes byte-identical files.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import struct
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from gpicture.data.taxonomy import NUSCENES_ATTRIBUTES, NUSCENES_CATEGORIES, NUSCENES_VISIBILITY
from gpicture.synth import portable as pm
from gpicture.synth.records import NuscenesScene, NuscenesSweep
from gpicture.synth.taxonomy import OBJECT_CLASSES

CHANNEL = "LIDAR_TOP"

# location -> (vehicle, UTC offset in hours) of the released logs (a scene of seed s is at the (s % 4)-th)
LOCATIONS: dict[str, tuple[str, int]] = {
    "singapore-onenorth": ("n015", 8),
    "boston-seaport": ("n008", -4),
    "singapore-queenstown": ("n015", 8),
    "singapore-hollandvillage": ("n015", 8),
}

CATEGORY_DESCRIPTIONS: dict[str, str] = {
    "noise": "Any lidar return that does not correspond to a physical object, such as dust, vapor, "
    "noise, fog, raindrops, smoke and reflections.",
    "animal": "All animals, e.g. cats, rats, dogs, deer, birds.",
    "human.pedestrian.adult": "Adult subcategory.",
    "human.pedestrian.child": "Child subcategory.",
    "human.pedestrian.construction_worker": "Construction worker.",
    "human.pedestrian.personal_mobility": "A small electric or self-propelled vehicle, e.g. skateboard, "
    "segway, or scooters, on which the person typically travels in a upright position.",
    "human.pedestrian.police_officer": "Police officer.",
    "human.pedestrian.stroller": "Strollers. If a person is in the stroller, include in the annotation.",
    "human.pedestrian.wheelchair": "Wheelchairs. If a person is in the wheelchair, include in the annotation.",
    "movable_object.barrier": "Temporary road barrier placed in the scene in order to redirect traffic.",
    "movable_object.debris": "Movable object that is left on the driveable surface that is too large to be "
    "driven over safely, e.g tree branch, full trash bag etc.",
    "movable_object.pushable_pullable": "Objects that a pedestrian may push or pull, e.g. dolleys, "
    "wheel barrows, garbage-bins, or shopping carts.",
    "movable_object.trafficcone": "All types of traffic cone.",
    "static_object.bicycle_rack": "Area or device intended to park or secure the bicycles in a row.",
    "vehicle.bicycle": "Human or electric powered 2-wheeled vehicle designed to travel at lower speeds "
    "either on road surface, sidewalks or bike paths.",
    "vehicle.bus.bendy": "Bendy bus subcategory.",
    "vehicle.bus.rigid": "Rigid bus subcategory.",
    "vehicle.car": "Vehicle designed primarily for personal use, e.g. sedans, hatch-backs, wagons, vans, "
    "mini-vans, SUVs and jeeps.",
    "vehicle.construction": "Vehicles primarily designed for construction.",
    "vehicle.emergency.ambulance": "All types of ambulances.",
    "vehicle.emergency.police": "All types of police vehicles.",
    "vehicle.motorcycle": "Gasoline or electric powered 2-wheeled vehicle designed to move rapidly on the road.",
    "vehicle.trailer": "Any vehicle trailer, both for trucks, cars and bikes.",
    "vehicle.truck": "Vehicles primarily designed to haul cargo.",
    "flat.driveable_surface": "All paved or unpaved surfaces that a car can drive on with no concern of "
    "traffic rules.",
    "flat.other": "All other forms of horizontal ground-level structures that do not belong to any of "
    "driveable_surface, curb, sidewalk and terrain.",
    "flat.sidewalk": "Sidewalk, pedestrian walkways, bike paths, etc.",
    "flat.terrain": "Natural horizontal surfaces such as ground level horizontal vegetation (< 20 cm tall), "
    "grass, rolling hills, soil, sand and gravel.",
    "static.manmade": "Includes man-made structures but not limited to: buildings, walls, guard rails, "
    "fences, poles, drainages, hydrants, flags, banners, street signs, electric circuit boxes, traffic "
    "lights, parking meters and stairs.",
    "static.other": "Points in the background that are not distinguishable, or objects that do not match "
    "any of the above labels.",
    "static.vegetation": "Any vegetation in the frame that is higher than the ground, including bushes, "
    "plants, potted plants, trees, etc.",
    "vehicle.ego": "The vehicle on which the cameras, radar and lidar are mounted, that is sometimes "
    "visible at the bottom of the image.",
}

ATTRIBUTE_DESCRIPTIONS: dict[str, str] = {
    "vehicle.moving": "Vehicle is moving.",
    "vehicle.stopped": "Vehicle, with a driver/rider in/on it, is currently stationary but has an intent to move.",
    "vehicle.parked": "Vehicle is stationary (usually for longer duration) with no immediate intent to move.",
    "cycle.with_rider": "There is a rider on the bicycle or motorcycle.",
    "cycle.without_rider": "There is NO rider on the bicycle or motorcycle.",
    "pedestrian.sitting_lying_down": "The human is sitting or lying down.",
    "pedestrian.standing": "The human is standing.",
    "pedestrian.moving": "The human is moving.",
}

VISIBILITY_DESCRIPTIONS: dict[str, str] = {
    "1": "visibility of whole object is between 0 and 40%",
    "2": "visibility of whole object is between 40 and 60%",
    "3": "visibility of whole object is between 60 and 80%",
    "4": "visibility of whole object is between 80 and 100%",
}

TABLES = (
    "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose",
    "log", "scene", "sample", "sample_data", "sample_annotation", "map", "lidarseg",
)

_CLASS_TO_CATEGORY = {c.name: c.category for c in OBJECT_CLASSES}
_LIDARSEG_NAME = re.compile(r"^[0-9a-f]{32}_lidarseg\.bin$")


def token(*parts: object) -> str:
    """A deterministic 32-hex token for a descriptive key."""
    return hashlib.md5("/".join(["gpicture-nuscenes", *map(str, parts)]).encode()).hexdigest()


def _floats(values) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]


def _quat_from_matrix(matrix: np.ndarray) -> list[float]:
    """Unit quaternion [w, x, y, z] (w >= 0) of the rotation part of a 3x3 / 4x4 matrix."""
    r = np.asarray(matrix, dtype=np.float64)[:3, :3]
    # Shepperd's method on the largest diagonal term tolerates the accumulated float error of a
    # product of rotations; no SVD: LAPACK's result depends on the BLAS kernel (gpicture.synth.portable)
    if pm.det3(r) < 0:
        raise ValueError("pose rotation is not a proper rotation (det < 0)")
    tr = r[0, 0] + r[1, 1] + r[2, 2]
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = 2.0 * math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        q = [(r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
    elif r[1, 1] > r[2, 2]:
        s = 2.0 * math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        q = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        q = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s]
    qa = np.asarray(q)
    qa /= pm.norm(qa)
    if qa[0] < 0:
        qa = -qa
    return _floats(qa)


def _yaw_quat(yaw: float) -> list[float]:
    s, c = pm.sincos(yaw / 2.0)
    return [float(c), 0.0, 0.0, float(s)]


def _png_gray(width: int, height: int) -> bytes:
    """A minimal 8-bit grayscale PNG, all background (0)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(width) for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def _write_json(path: Path, table: list[dict]) -> None:
    path.write_text(json.dumps(table, indent=0, allow_nan=False) + "\n")


def _logfile(scene: NuscenesScene, used: set[str]) -> tuple[str, str]:
    """The log name ``n015-2018-07-24-11-22-45+0800`` (local start time) and date_captured."""
    vehicle, offset = LOCATIONS[scene.location]
    tz = timezone(timedelta(hours=offset))
    start = datetime.fromtimestamp(scene.sweeps[0].timestamp_us // 1_000_000, tz=tz)
    while True:
        name = f"{vehicle}-{start:%Y-%m-%d-%H-%M-%S}{offset * 100:+05d}"
        if name not in used:
            used.add(name)
            return name, f"{start:%Y-%m-%d}"
        start -= timedelta(seconds=1)  # two scenes starting the same second: keep file names unique


def _check_scene(scene: NuscenesScene) -> None:
    if scene.location not in LOCATIONS:
        raise ValueError(f"scene {scene.name}: unknown location {scene.location!r} (one of {sorted(LOCATIONS)})")
    if not scene.sweeps:
        raise ValueError(f"scene {scene.name}: no sweeps")
    if not any(s.is_key_frame for s in scene.sweeps):
        raise ValueError(f"scene {scene.name}: no keyframe")
    ts = [int(s.timestamp_us) for s in scene.sweeps]
    if any(b <= a for a, b in itertools.pairwise(ts)):
        raise ValueError(f"scene {scene.name}: sweep timestamps must be strictly increasing")
    for i, s in enumerate(scene.sweeps):
        pts = np.asarray(s.points)
        if pts.ndim != 2 or pts.shape[1] != 5:
            raise ValueError(f"scene {scene.name} sweep {i}: points must be (N, 5), got {pts.shape}")
        if s.is_key_frame:
            if s.lidarseg is None or np.asarray(s.lidarseg).shape != (len(pts),):
                raise ValueError(f"scene {scene.name} sweep {i}: keyframe needs one lidarseg label per point")
            if np.asarray(s.lidarseg).size and int(np.asarray(s.lidarseg).max()) >= len(NUSCENES_CATEGORIES):
                raise ValueError(f"scene {scene.name} sweep {i}: lidarseg label out of range")


def write_nuscenes(scenes: list[NuscenesScene], root: Path, version: str = "v1.0-trainval") -> None:
    """Write ``scenes`` under ``root`` in the nuScenes layout (tables in ``root/<version>``)."""
    if not scenes:
        raise ValueError("write_nuscenes needs at least one scene")
    names = [s.name for s in scenes]
    if len(set(names)) != len(names):
        raise ValueError("scene names must be unique")
    for scene in scenes:
        _check_scene(scene)

    root = Path(root)
    table_dir = root / version
    lidarseg_dir = root / "lidarseg" / version
    for d in (table_dir, lidarseg_dir, root / "samples" / CHANNEL, root / "sweeps" / CHANNEL, root / "maps"):
        d.mkdir(parents=True, exist_ok=True)

    sensor_token = token("sensor", CHANNEL)
    t: dict[str, list[dict]] = {name: [] for name in TABLES}
    t["category"] = [
        {"token": token("category", name), "name": name, "description": CATEGORY_DESCRIPTIONS[name], "index": i}
        for i, name in enumerate(NUSCENES_CATEGORIES)
    ]
    t["attribute"] = [
        {"token": token("attribute", name), "name": name, "description": ATTRIBUTE_DESCRIPTIONS[name]}
        for name in NUSCENES_ATTRIBUTES
    ]
    t["visibility"] = [
        {"token": tok, "level": level, "description": VISIBILITY_DESCRIPTIONS[tok]}
        for tok, level in NUSCENES_VISIBILITY.items()
    ]
    t["sensor"] = [{"token": sensor_token, "channel": CHANNEL, "modality": "lidar"}]

    used_logs: set[str] = set()
    map_logs: dict[str, list[str]] = {}
    lidarseg_files: set[str] = set()

    for scene in scenes:
        scene_token = token("scene", scene.name)
        log_token = token("log", scene.name)
        cs_token = token("calibrated_sensor", scene.name, CHANNEL)
        logfile, date = _logfile(scene, used_logs)
        t["log"].append({
            "token": log_token, "logfile": logfile, "vehicle": logfile.split("-")[0],
            "date_captured": date, "location": scene.location,
        })
        map_logs.setdefault(scene.location, []).append(log_token)
        t["calibrated_sensor"].append({
            "token": cs_token, "sensor_token": sensor_token,
            "translation": _floats(np.asarray(scene.ego_from_sensor)[:3, 3]),
            "rotation": _quat_from_matrix(scene.ego_from_sensor), "camera_intrinsic": [],
        })

        sweeps = scene.sweeps
        key_idx = [i for i, s in enumerate(sweeps) if s.is_key_frame]
        sample_tokens = [token("sample", scene.name, k) for k in range(len(key_idx))]
        sd_tokens = [token("sample_data", scene.name, CHANNEL, i) for i in range(len(sweeps))]

        # sample of each sweep: the keyframe at or after it, else the last one
        owner = np.searchsorted(np.asarray(key_idx), np.arange(len(sweeps)), side="left")
        owner = np.minimum(owner, len(key_idx) - 1)

        for k, i in enumerate(key_idx):
            t["sample"].append({
                "token": sample_tokens[k], "timestamp": int(sweeps[i].timestamp_us),
                "prev": sample_tokens[k - 1] if k > 0 else "",
                "next": sample_tokens[k + 1] if k + 1 < len(key_idx) else "",
                "scene_token": scene_token,
            })
        t["scene"].append({
            "token": scene_token, "log_token": log_token, "nbr_samples": len(key_idx),
            "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1],
            "name": scene.name, "description": scene.description,
        })

        instances: dict[int, dict] = {}
        last_ann: dict[int, dict] = {}
        for i, sweep in enumerate(sweeps):
            sd_token = sd_tokens[i]
            ts = int(sweep.timestamp_us)
            folder = "samples" if sweep.is_key_frame else "sweeps"
            filename = f"{folder}/{CHANNEL}/{logfile}__{CHANNEL}__{ts}.pcd.bin"
            np.ascontiguousarray(sweep.points, dtype=np.float32).tofile(root / filename)
            pose = np.asarray(sweep.world_from_ego, dtype=np.float64)
            t["ego_pose"].append({
                "token": sd_token, "timestamp": ts,
                "rotation": _quat_from_matrix(pose), "translation": _floats(pose[:3, 3]),
            })
            t["sample_data"].append({
                "token": sd_token, "sample_token": sample_tokens[int(owner[i])], "ego_pose_token": sd_token,
                "calibrated_sensor_token": cs_token, "timestamp": ts, "fileformat": "pcd",
                "is_key_frame": bool(sweep.is_key_frame), "height": 0, "width": 0, "filename": filename,
                "prev": sd_tokens[i - 1] if i > 0 else "",
                "next": sd_tokens[i + 1] if i + 1 < len(sweeps) else "",
            })
            if not sweep.is_key_frame:
                continue
            seg_name = f"{sd_token}_lidarseg.bin"
            np.ascontiguousarray(sweep.lidarseg, dtype=np.uint8).tofile(lidarseg_dir / seg_name)
            lidarseg_files.add(seg_name)
            t["lidarseg"].append({
                "token": sd_token, "sample_data_token": sd_token,
                "filename": f"lidarseg/{version}/{seg_name}",
            })
            if sweep.occupancy is not None:
                occ_dir = root / "nuScenes-Occupancy" / f"scene_{scene_token}" / "occupancy"
                occ_dir.mkdir(parents=True, exist_ok=True)
                np.save(occ_dir / f"{sd_token}.npy", np.ascontiguousarray(sweep.occupancy, dtype=np.int16))
            k = int(owner[i])
            _annotate(t, scene.name, sample_tokens[k], k, sweep, instances, last_ann)
        t["instance"].extend(instances.values())

    t["map"] = [
        {"category": "semantic_prior", "token": token("map", loc), "filename": f"maps/{token('map', loc)}.png",
         "log_tokens": logs}
        for loc, logs in map_logs.items()
    ]
    png = _png_gray(16, 16)
    for rec in t["map"]:
        (root / rec["filename"]).write_bytes(png)

    # the devkit requires exactly one label file per lidarseg record: drop stale ones from earlier runs
    for f in lidarseg_dir.iterdir():
        if _LIDARSEG_NAME.match(f.name) and f.name not in lidarseg_files:
            f.unlink()
    for name in TABLES:
        _write_json(table_dir / f"{name}.json", t[name])


def _annotate(t: dict[str, list[dict]], scene_name: str, sample_token: str, k: int, sweep: NuscenesSweep,
              instances: dict[int, dict], last_ann: dict[int, dict]) -> None:
    """Append the sample_annotation records of one keyframe, linking each instance's track."""
    obj = sweep.objects
    if obj is None:
        return
    for j in range(len(obj)):
        iid = int(obj.instance_id[j])
        cls = str(obj.class_name[j])
        if cls not in _CLASS_TO_CATEGORY:
            raise ValueError(f"scene {scene_name}: unknown object class {cls!r}")
        category = _CLASS_TO_CATEGORY[cls]
        vis = str(int(obj.visibility[j]))
        if vis not in NUSCENES_VISIBILITY:
            raise ValueError(f"scene {scene_name}: visibility must be 1..4, got {vis}")
        attr = str(obj.attribute[j])
        if attr and attr not in NUSCENES_ATTRIBUTES:
            raise ValueError(f"scene {scene_name}: unknown attribute {attr!r}")
        ann_token = token("sample_annotation", scene_name, k, iid)
        inst_token = token("instance", scene_name, iid)
        length, width, height = _floats(obj.size[j])
        prev = last_ann.get(iid)
        ann = {
            "token": ann_token, "sample_token": sample_token, "instance_token": inst_token,
            "visibility_token": vis, "attribute_tokens": [token("attribute", attr)] if attr else [],
            "translation": _floats(obj.center[j]), "size": [width, length, height],
            "rotation": _yaw_quat(float(obj.yaw[j])), "prev": prev["token"] if prev else "", "next": "",
            "num_lidar_pts": int(obj.num_points[j]), "num_radar_pts": 0,
        }
        if prev is not None:
            prev["next"] = ann_token
        last_ann[iid] = ann
        t["sample_annotation"].append(ann)
        inst = instances.get(iid)
        cat_token = token("category", category)
        if inst is None:
            instances[iid] = {
                "token": inst_token, "category_token": cat_token, "nbr_annotations": 1,
                "first_annotation_token": ann_token, "last_annotation_token": ann_token,
            }
        else:
            if inst["category_token"] != cat_token:
                raise ValueError(f"scene {scene_name}: instance {iid} changes class")
            inst["nbr_annotations"] += 1
            inst["last_annotation_token"] = ann_token
