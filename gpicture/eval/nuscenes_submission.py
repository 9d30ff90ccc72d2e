"""The nuScenes detection submission format: LiDAR-frame predictions as official result JSON.

Boxes come as ``x, y, z, l, w, h, yaw`` in a keyframe's LIDAR_TOP frame (the voxel store's
convention) with ``vx, vy`` in that frame (:class:`~gpicture.eval.predictions.DetectionPrediction`).
A submission box is in global coordinates:

* ``translation = pose @ centre`` (``pose`` is global_from_lidar, 4 x 4);
* ``rotation = q(pose) * q_z(yaw)`` as a ``w, x, y, z`` quaternion — the box's rotation
  ``R_global_from_lidar @ Rz(yaw)``;
* ``size = [w, l, h]`` (the devkit's order);
* ``velocity`` = the first two components of ``R_global_from_lidar @ (vx, vy, 0)``; NaN -> 0.

``attribute_name`` (when not given) follows the rule common to CenterPoint-style code: speed
above 0.2 m/s gives ``vehicle.moving`` / ``cycle.with_rider`` / ``pedestrian.moving``,
otherwise ``vehicle.parked`` (``vehicle.stopped`` for buses) / ``cycle.without_rider`` /
``pedestrian.standing``; barriers and traffic cones have none (``''``).

:func:`check_submission` checks a file against what the devkit's ``DetectionEval`` accepts,
so that a bad submission gives a ValueError naming the file instead of a bare assertion.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from pyquaternion import Quaternion

from gpicture.atomic import write_file_atomic
from gpicture.data.spec import DatasetSpec
from gpicture.data.store import VoxelStore
from gpicture.eval.predictions import DetectionPrediction
from gpicture.geometry import quat_mul


@functools.cache
def detection_classes() -> tuple[str, ...]:
    """The devkit's detection names, in its order: car, truck, bus, trailer,
    construction_vehicle, pedestrian, motorcycle, bicycle, traffic_cone, barrier."""
    from nuscenes.eval.detection.constants import DETECTION_NAMES  # lazy: the devkit

    return tuple(DETECTION_NAMES)


@functools.cache
def _attribute_names() -> frozenset[str]:
    from nuscenes.eval.detection.constants import ATTRIBUTE_NAMES  # lazy: the devkit

    return frozenset(ATTRIBUTE_NAMES)


def __getattr__(name: str) -> tuple[str, ...]:
    """``DETECTION_CLASSES`` (:func:`detection_classes`), read from the devkit on first use, so
    that importing this module (the detection task does) needs no devkit."""
    if name == "DETECTION_CLASSES":
        return detection_classes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


MAX_BOXES_PER_SAMPLE = 500  # detection_cvpr_2019: the devkit refuses more
MOVING_SPEED = 0.2  # m/s

_VEHICLES = {"car", "truck", "bus", "trailer", "construction_vehicle"}
_CYCLES = {"bicycle", "motorcycle"}
DEFAULT_META = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}
_BOX_KEYS = ("sample_token", "translation", "size", "rotation", "velocity", "detection_name",
             "detection_score", "attribute_name")


def default_attribute(detection_name: str, speed: float) -> str:
    """The attribute written for a box of class ``detection_name`` moving at ``speed`` m/s."""
    moving = bool(speed > MOVING_SPEED)
    if detection_name in _VEHICLES:
        if moving:
            return "vehicle.moving"
        return "vehicle.stopped" if detection_name == "bus" else "vehicle.parked"
    if detection_name in _CYCLES:
        return "cycle.with_rider" if moving else "cycle.without_rider"
    if detection_name == "pedestrian":
        return "pedestrian.moving" if moving else "pedestrian.standing"
    if detection_name in detection_classes():
        return ""
    raise ValueError(f"unknown detection name {detection_name!r} (one of {', '.join(detection_classes())})")


def _pose_quaternion(pose: np.ndarray, token: str) -> np.ndarray:
    try:
        return Quaternion(matrix=pose[:3, :3], rtol=1e-5, atol=1e-6).normalised.elements
    except ValueError as e:
        raise ValueError(f"sample {token}: pose rotation is not a rotation matrix ({e})") from None


def _frame_results(pred: DetectionPrediction, pose: np.ndarray, max_boxes: int | None) -> list[dict]:
    token = pred.frame_id
    pose = np.asarray(pose, dtype=np.float64)
    boxes = np.asarray(pred.boxes, dtype=np.float64)
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise ValueError(f"sample {token}: pose must be a finite 4x4 matrix, got shape {pose.shape}")
    if boxes.size == 0:
        boxes = np.zeros((0, 7))
    if boxes.ndim != 2 or boxes.shape[1] != 7:
        raise ValueError(f"sample {token}: boxes must be (K, 7) x, y, z, l, w, h, yaw, got {boxes.shape}")
    k = len(boxes)
    if not np.isfinite(boxes).all():
        raise ValueError(f"sample {token}: non-finite box values")
    scores = np.asarray(pred.scores, dtype=np.float64).reshape(-1)
    if len(scores) != k or not np.isfinite(scores).all():
        raise ValueError(f"sample {token}: scores must be {k} finite values")
    labels = [str(v) for v in np.asarray(pred.labels).reshape(-1)]
    if len(labels) != k:
        raise ValueError(f"sample {token}: {len(labels)} labels for {k} boxes")
    bad = sorted(set(labels) - set(detection_classes()))
    if bad:
        raise ValueError(f"sample {token}: unknown detection names {bad} (one of {', '.join(detection_classes())})")
    vel = np.asarray(pred.velocity, dtype=np.float64).reshape(-1, 2)
    if len(vel) != k:
        raise ValueError(f"sample {token}: {len(vel)} velocities for {k} boxes")
    vel = np.nan_to_num(vel, nan=0.0, posinf=0.0, neginf=0.0)

    order = np.argsort(-scores, kind="stable")
    if max_boxes is not None:
        order = order[:max_boxes]

    rot = pose[:3, :3]
    centre = boxes[:, :3] @ rot.T + pose[:3, 3]
    vel_g = (np.concatenate([vel, np.zeros((k, 1))], axis=1) @ rot.T)[:, :2]
    half = boxes[:, 6] / 2.0
    q_yaw = np.stack([np.cos(half), np.zeros(k), np.zeros(k), np.sin(half)], axis=-1)
    q = quat_mul(np.broadcast_to(_pose_quaternion(pose, token), (k, 4)), q_yaw)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    q[q[:, 0] < 0] *= -1.0
    size = boxes[:, [4, 3, 5]]
    speed = np.hypot(vel_g[:, 0], vel_g[:, 1])
    return [{
        "sample_token": token,
        "translation": [float(v) for v in centre[j]],
        "size": [float(v) for v in size[j]],
        "rotation": [float(v) for v in q[j]],
        "velocity": [float(v) for v in vel_g[j]],
        "detection_name": labels[j],
        "detection_score": float(scores[j]),
        "attribute_name": default_attribute(labels[j], float(speed[j])),
    } for j in order]


def lidar_boxes_to_submission(preds: Iterable[DetectionPrediction], poses: Callable[[int], np.ndarray],
                              meta: dict | None = None, *,
                              max_boxes_per_sample: int | None = MAX_BOXES_PER_SAMPLE) -> dict:
    """An official detection submission from per-frame predictions in the keyframes' LiDAR
    frames; ``poses(frame_index)`` is the frame's (4, 4) global_from_lidar pose.

    Boxes are written in decreasing score order; only the ``max_boxes_per_sample`` best are
    kept (the devkit refuses more than 500; None keeps all); attributes follow
    :func:`default_attribute`. Every frame gets an entry, empty when it has no box, as the
    evaluation requires. ``meta`` updates the default meta (LiDAR only).
    """
    results: dict[str, list[dict]] = {}
    for pred in preds:
        if pred.frame_id in results:
            raise ValueError(f"sample {pred.frame_id} appears twice")
        results[pred.frame_id] = _frame_results(pred, poses(pred.frame_index), max_boxes_per_sample)
    return {"meta": {**DEFAULT_META, **(meta or {})}, "results": results}


def store_ground_truth(store: VoxelStore, spec: DatasetSpec) -> list[DetectionPrediction]:
    """Every frame's annotated boxes as predictions with score 1.0: boxes whose category has a
    detection class and with at least one LiDAR point (the boxes the devkit evaluates)."""
    cmap = spec.detection_class_map()
    out = []
    for i in range(len(store)):
        boxes, names, vel, npts = store.frame_boxes(i)
        det = [cmap.get(str(n)) for n in names]
        keep = np.array([d is not None for d in det], dtype=bool).reshape(-1) & (np.asarray(npts).reshape(-1) > 0)
        out.append(DetectionPrediction(
            frame_id=str(store.frame_ids[i]), frame_index=i,
            boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 7)[keep],
            scores=np.ones(int(keep.sum())), labels=np.array([d for d, k in zip(det, keep) if k], dtype=object),
            velocity=np.asarray(vel, dtype=np.float64).reshape(-1, 2)[keep]))
    return out


def write_submission(sub: dict, path: Path) -> None:
    """Write ``sub`` as strict JSON (no NaN), atomically."""
    write_file_atomic(path, json.dumps(sub, allow_nan=False))


def _finite_list(value: Any, n: int) -> bool:
    return (isinstance(value, list) and len(value) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def check_submission(path: Path, sample_tokens: set[str], max_boxes_per_sample: int = MAX_BOXES_PER_SAMPLE) -> dict:
    """Load a submission file and check it against the devkit's requirements; ValueError
    naming the file for anything the devkit would refuse (or silently misread)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: submission file does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON submission ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ValueError(f"{path}: no 'results' object (the official format is {{'meta': ..., 'results': ...}})")
    if not isinstance(data.get("meta"), dict):
        raise ValueError(f"{path}: no 'meta' object")
    results = data["results"]
    extra = sorted(set(results) - sample_tokens)
    if extra:
        raise ValueError(f"{path}: {len(extra)} sample tokens not in the eval set, e.g. {extra[:3]}")
    missing = sorted(sample_tokens - set(results))
    if missing:
        raise ValueError(f"{path}: {len(missing)} samples of the eval set have no entry "
                         f"(give an empty list for a sample without boxes), e.g. {missing[:3]}")
    for token, boxes in results.items():
        if not isinstance(boxes, list):
            raise ValueError(f"{path}: results[{token!r}] is not a list")
        if len(boxes) > max_boxes_per_sample:
            raise ValueError(f"{path}: sample {token} has {len(boxes)} boxes, at most {max_boxes_per_sample} allowed")
        for j, box in enumerate(boxes):
            where = f"{path}: results[{token!r}][{j}]"
            if not isinstance(box, dict):
                raise ValueError(f"{where} is not an object")
            absent = [k for k in _BOX_KEYS if k not in box]
            if absent:
                raise ValueError(f"{where} lacks {absent}")
            if box["sample_token"] != token:
                raise ValueError(f"{where} has sample_token {box['sample_token']!r}")
            for key, n in (("translation", 3), ("size", 3), ("rotation", 4), ("velocity", 2)):
                if not _finite_list(box[key], n):
                    raise ValueError(f"{where}: {key} must be {n} finite numbers, got {box[key]!r}")
            if box["detection_name"] not in detection_classes():
                raise ValueError(f"{where}: unknown detection_name {box['detection_name']!r}")
            if box["attribute_name"] not in _attribute_names() and box["attribute_name"] != "":
                raise ValueError(f"{where}: unknown attribute_name {box['attribute_name']!r}")
            if not _finite_list([box["detection_score"]], 1):
                raise ValueError(f"{where}: detection_score must be a finite number")
    return data
