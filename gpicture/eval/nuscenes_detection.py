"""nuScenes 3D detection: LiDAR-frame boxes as an official submission, scored by the devkit.

Boxes come as ``x, y, z, l, w, h, yaw`` in a keyframe's LIDAR_TOP frame (the voxel store's
convention) with ``vx, vy`` in that frame. A submission box is in global coordinates:

* ``translation = pose @ centre`` (``pose`` is global_from_lidar, 4 x 4);
* ``rotation = q(pose) * q_z(yaw)`` as a ``w, x, y, z`` quaternion — the box's rotation
  ``R_global_from_lidar @ Rz(yaw)``;
* ``size = [w, l, h]`` (the devkit's order);
* ``velocity`` = the first two components of ``R_global_from_lidar @ (vx, vy, 0)``; NaN -> 0.

``attribute_name`` (when not given) follows the rule common to CenterPoint-style code: speed
above 0.2 m/s gives ``vehicle.moving`` / ``cycle.with_rider`` / ``pedestrian.moving``,
otherwise ``vehicle.parked`` (``vehicle.stopped`` for buses) / ``cycle.without_rider`` /
``pedestrian.standing``; barriers and traffic cones have none (``''``).

:func:`evaluate_submission` runs ``nuscenes.eval.detection.evaluate.DetectionEval`` with
the ``detection_cvpr_2019`` configuration, after checking the file itself so that a bad
submission gives a ValueError naming the file instead of a bare devkit assertion.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from nuscenes.eval.detection.constants import ATTRIBUTE_NAMES, DETECTION_NAMES
from pyquaternion import Quaternion

from gpicture.atomic import write_file_atomic
from gpicture.geometry import quat_mul

DETECTION_CLASSES: tuple[str, ...] = tuple(DETECTION_NAMES)
# car, truck, bus, trailer, construction_vehicle, pedestrian, motorcycle, bicycle, traffic_cone, barrier

MAX_BOXES_PER_SAMPLE = 500  # detection_cvpr_2019: the devkit refuses more
MOVING_SPEED = 0.2  # m/s

_VEHICLES = {"car", "truck", "bus", "trailer", "construction_vehicle"}
_CYCLES = {"bicycle", "motorcycle"}
DEFAULT_META = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}
_BOX_KEYS = ("sample_token", "translation", "size", "rotation", "velocity", "detection_name",
             "detection_score", "attribute_name")


def category_to_detection(name: str) -> str | None:
    """The detection class of a raw nuScenes category (``vehicle.car`` -> ``car``), None if it has none."""
    from nuscenes.eval.detection.utils import category_to_detection_name

    return category_to_detection_name(str(name))


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
    if detection_name in DETECTION_CLASSES:
        return ""
    raise ValueError(f"unknown detection name {detection_name!r} (one of {', '.join(DETECTION_CLASSES)})")


# ---------------------------------------------------------------------------------------
# LiDAR-frame boxes -> submission
# ---------------------------------------------------------------------------------------




def _pose_quaternion(pose: np.ndarray, token: str) -> np.ndarray:
    try:
        return Quaternion(matrix=pose[:3, :3], rtol=1e-5, atol=1e-6).normalised.elements
    except ValueError as e:
        raise ValueError(f"sample {token}: pose rotation is not a rotation matrix ({e})") from None


def _labels(raw: Any, k: int, token: str) -> list[str]:
    arr = np.asarray(raw).reshape(-1)
    if len(arr) != k:
        raise ValueError(f"sample {token}: {len(arr)} labels for {k} boxes")
    if arr.dtype.kind in "iu":
        if k and (arr.min() < 0 or arr.max() >= len(DETECTION_CLASSES)):
            raise ValueError(f"sample {token}: label index out of range 0..{len(DETECTION_CLASSES) - 1}")
        return [DETECTION_CLASSES[int(i)] for i in arr]
    names = [str(v) for v in arr]
    bad = sorted(set(names) - set(DETECTION_CLASSES))
    if bad:
        raise ValueError(f"sample {token}: unknown detection names {bad} (one of {', '.join(DETECTION_CLASSES)})")
    return names


def _frame_results(frame: dict, max_boxes: int | None) -> tuple[str, list[dict]]:
    try:
        token = str(frame["sample_token"])
        pose = np.asarray(frame["pose"], dtype=np.float64)
        boxes = np.asarray(frame["boxes"], dtype=np.float64)
    except KeyError as e:
        raise ValueError(f"frame {frame.get('sample_token', '?')}: missing key {e}") from None
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise ValueError(f"sample {token}: pose must be a finite 4x4 matrix, got shape {pose.shape}")
    if boxes.size == 0:
        boxes = np.zeros((0, 7))
    if boxes.ndim != 2 or boxes.shape[1] != 7:
        raise ValueError(f"sample {token}: boxes must be (K, 7) x, y, z, l, w, h, yaw, got {boxes.shape}")
    k = len(boxes)
    if not np.isfinite(boxes).all():
        raise ValueError(f"sample {token}: non-finite box values")
    scores = np.asarray(frame.get("scores", np.ones(k)), dtype=np.float64).reshape(-1)
    if len(scores) != k or not np.isfinite(scores).all():
        raise ValueError(f"sample {token}: scores must be {k} finite values")
    labels = _labels(frame.get("labels", []), k, token)
    vel = frame.get("velocity")
    vel = np.zeros((k, 2)) if vel is None else np.asarray(vel, dtype=np.float64).reshape(-1, 2)
    if len(vel) != k:
        raise ValueError(f"sample {token}: {len(vel)} velocities for {k} boxes")
    vel = np.nan_to_num(vel, nan=0.0, posinf=0.0, neginf=0.0)
    attrs = frame.get("attributes")
    if attrs is not None:
        attrs = [str(a) for a in attrs]
        if len(attrs) != k:
            raise ValueError(f"sample {token}: {len(attrs)} attributes for {k} boxes")
        bad = sorted(set(attrs) - set(ATTRIBUTE_NAMES) - {""})
        if bad:
            raise ValueError(f"sample {token}: unknown attribute names {bad}")

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

    out = []
    for j in order:
        name = labels[j]
        out.append({
            "sample_token": token,
            "translation": [float(v) for v in centre[j]],
            "size": [float(v) for v in size[j]],
            "rotation": [float(v) for v in q[j]],
            "velocity": [float(v) for v in vel_g[j]],
            "detection_name": name,
            "detection_score": float(scores[j]),
            "attribute_name": attrs[j] if attrs is not None else default_attribute(name, float(speed[j])),
        })
    return token, out


def lidar_boxes_to_submission(frames: Sequence[dict], meta: dict | None = None, *,
                              max_boxes_per_sample: int | None = MAX_BOXES_PER_SAMPLE) -> dict:
    """An official detection submission from boxes in each keyframe's LiDAR frame.

    Each frame: ``sample_token``; ``pose`` (4, 4) global_from_lidar; ``boxes`` (K, 7)
    x, y, z, l, w, h, yaw; ``velocity`` (K, 2) vx, vy (optional, NaN -> 0); ``labels`` (K,)
    detection names (or integer indices into DETECTION_CLASSES); ``scores`` (K,) (optional,
    1.0); ``attributes`` (K,) (optional, otherwise :func:`default_attribute`). Boxes are
    written in decreasing score order; only the ``max_boxes_per_sample`` best are kept
    (the devkit refuses more than 500; None keeps all). Every frame gets an entry, empty
    when it has no box, as the evaluation requires. ``meta`` updates the default meta
    (LiDAR only).
    """
    results: dict[str, list[dict]] = {}
    for frame in frames:
        token, boxes = _frame_results(frame, max_boxes_per_sample)
        if token in results:
            raise ValueError(f"sample {token} appears twice")
        results[token] = boxes
    return {"meta": {**DEFAULT_META, **(meta or {})}, "results": results}


def _store_boxes(store, i: int):
    """(frame_id, pose, boxes, names, velocity, num_points) of frame i without reading its points."""
    return (store.frame_ids[i], store.pose(i), *store.frame_boxes(i))


def store_ground_truth_frames(store) -> list[dict]:
    """Every frame's annotated boxes as :func:`lidar_boxes_to_submission` frames with score 1.0:
    boxes whose category has a detection class and with at least one LiDAR point."""
    frames = []
    for i in range(len(store)):
        token, pose, boxes, names, vel, npts = _store_boxes(store, i)
        det = [category_to_detection(n) for n in names]
        keep = np.array([d is not None for d in det], dtype=bool).reshape(-1) & (np.asarray(npts).reshape(-1) > 0)
        frames.append({
            "sample_token": str(token),
            "pose": np.asarray(pose, dtype=np.float64),
            "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 7)[keep],
            "velocity": np.asarray(vel, dtype=np.float64).reshape(-1, 2)[keep],
            "labels": np.array([d for d, k in zip(det, keep) if k], dtype=object),
            "scores": np.ones(int(keep.sum())),
        })
    return frames


def write_submission(sub: dict, path: Path) -> None:
    """Write ``sub`` as strict JSON (no NaN), atomically."""
    write_file_atomic(path, json.dumps(sub, allow_nan=False))


# ---------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------


def _eval_set_tokens(nusc, eval_set: str) -> set[str]:
    from nuscenes.utils.splits import create_splits_scenes, is_predefined_split

    if is_predefined_split(split_name=eval_set):
        version = nusc.version
        want = ("trainval" if eval_set in {"train", "val", "train_detect", "train_track"}
                else "mini" if eval_set in {"mini_train", "mini_val"} else "test" if eval_set == "test" else None)
        if want is None:
            raise ValueError(f"eval set {eval_set!r} is not a detection evaluation split")
        if not version.endswith(want):
            raise ValueError(f"eval set {eval_set!r} does not belong to nuScenes version {version!r}")
        scenes = set(create_splits_scenes()[eval_set])
    else:
        from nuscenes.utils.splits import get_scenes_of_custom_split

        try:
            scenes = set(get_scenes_of_custom_split(split_name=eval_set, nusc=nusc))
        except (FileNotFoundError, AssertionError, ValueError) as e:
            raise ValueError(f"unknown eval set {eval_set!r}: {e}") from None
    scene_names = {s["token"]: s["name"] for s in nusc.scene}
    return {s["token"] for s in nusc.sample if scene_names[s["scene_token"]] in scenes}


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
            if box["detection_name"] not in DETECTION_CLASSES:
                raise ValueError(f"{where}: unknown detection_name {box['detection_name']!r}")
            if box["attribute_name"] not in ATTRIBUTE_NAMES and box["attribute_name"] != "":
                raise ValueError(f"{where}: unknown attribute_name {box['attribute_name']!r}")
            if not _finite_list([box["detection_score"]], 1):
                raise ValueError(f"{where}: detection_score must be a finite number")
    return data


def _write_json(path: Path, obj: Any) -> None:
    write_file_atomic(path, json.dumps(obj, indent=2))


def evaluate_submission(nusc_root: Path, version: str, eval_set: str, submission: Path, out_dir: Path, *,
                        nusc=None) -> dict:
    """Score ``submission`` with the devkit's DetectionEval (``detection_cvpr_2019``).

    Writes the devkit's ``metrics_summary.json`` and ``metrics_details.json`` in ``out_dir``
    and returns ``{"mAP", "NDS", "per_class_AP", "tp_errors", "per_class_tp_errors"}``
    (TP errors are NaN for a class without ground truth). ``nusc`` reuses an already
    loaded ``NuScenes`` of ``nusc_root`` / ``version``. ValueError naming the file for a
    submission that is not valid JSON, lacks ``results``, or whose samples are not
    exactly those of ``eval_set``.
    """
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval
    from nuscenes.nuscenes import NuScenes

    submission, out_dir = Path(submission), Path(out_dir)
    if nusc is None:
        nusc = NuScenes(version=version, dataroot=str(nusc_root), verbose=False)
    cfg = config_factory("detection_cvpr_2019")
    check_submission(submission, _eval_set_tokens(nusc, eval_set), cfg.max_boxes_per_sample)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        ev = DetectionEval(nusc, cfg, str(submission), eval_set, str(out_dir), verbose=False)
    except AssertionError as e:  # anything the checks above did not foresee
        raise ValueError(f"{submission}: refused by the nuScenes devkit: {e}") from None
    metrics, details = ev.evaluate()  # DetectionEval.main without its printing and plots
    summary = metrics.serialize()
    summary["meta"] = ev.meta.copy()
    _write_json(out_dir / "metrics_summary.json", summary)
    _write_json(out_dir / "metrics_details.json", details.serialize())
    return {
        "mAP": float(summary["mean_ap"]),
        "NDS": float(summary["nd_score"]),
        "per_class_AP": {k: float(v) for k, v in summary["mean_dist_aps"].items()},
        "tp_errors": {k: float(v) for k, v in summary["tp_errors"].items()},
        "per_class_tp_errors": {c: {k: float(v) for k, v in errs.items()}
                                for c, errs in summary["label_tp_errors"].items()},
    }
