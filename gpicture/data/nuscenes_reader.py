"""Reading nuScenes keyframes (LIDAR_TOP with previous sweeps, boxes, lidarseg, occupancy) as `RawFrame`s.

The points equal the devkit's ``LidarPointCloud.from_file_multisweep(nusc, sample, 'LIDAR_TOP',
'LIDAR_TOP', nsweeps=sweeps)`` exactly: the keyframe first, then the previous sweeps newest
first; ``remove_close(1.0)`` on every sweep (keyframe included); each sweep mapped into the
keyframe's LiDAR frame by the same float64 4x4 matrix, rounded to float32. Unlike the devkit,
the keyframe's lidarseg labels stay aligned with its points, and non-finite values follow the
:class:`~gpicture.data.finite.NonFinitePolicy`: points with a non-finite coordinate, intensity
or ring are dropped (and counted) or refused; a non-finite pose, box or label is refused, as is
a lidarseg class index outside the category table or a malformed occupancy file, naming the
file. A token that no table holds is named with its table, not a ``KeyError``.

Boxes are those of ``nusc.get_sample_data(lidar_token)`` (the keyframe's annotations in its
LiDAR frame); velocities are ``nusc.box_velocity`` rotated into that frame (the devkit's
``get_sample_data`` leaves them NaN).

``read_sample(..., labels=False)`` (an unlabelled split) reads no annotation: no lidarseg or
occupancy file is opened, no ``sample_annotation`` record taken (the devkit still loads the
tables); every label field is None.

``RawFrame.extra``: ``dropped_nonfinite`` (points dropped for a non-finite value, over all
sweeps read), ``lidar_token`` (the keyframe's LIDAR_TOP sample_data token), ``sweeps_read``
(fewer than asked near the start of a scene, as in the devkit).
"""

from __future__ import annotations

import json
import os
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pyquaternion import Quaternion

from gpicture.data.finite import (
    DEFAULT_POLICY,
    ERROR,
    NonFinitePolicy,
    bad_box_rows,
    nonfinite_points_error,
)
from gpicture.data.frame import EmptyFrameError, RawFrame
from gpicture.data.nuscenes_tables import load_error
from gpicture.data.occupancy_targets import read_openoccupancy_rows
from gpicture.data.schema import BOX, level_fields
from gpicture.data.spec import UNLABELLED
from gpicture.geometry import quat_mul

if TYPE_CHECKING:  # annotations only: the devkit is imported where a dataset is opened or read
    from nuscenes.nuscenes import NuScenes

LIDAR = "LIDAR_TOP"
MIN_DISTANCE = 1.0  # from_file_multisweep's default min_distance (m)
POINT_DIMS = 5  # x, y, z, intensity, ring (float32)

TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor",
          "ego_pose", "log", "scene", "sample", "sample_data", "sample_annotation", "map")

# Which dataset version each official split belongs to (as the devkit's create_splits_logs / load_gt).
_SPLIT_VERSION = {"train": "trainval", "val": "trainval", "train_detect": "trainval", "train_track": "trainval",
                  "mini_train": "mini", "mini_val": "mini", "test": "test"}


# ---------------------------------------------------------------------------------------
# Opening, splits
# ---------------------------------------------------------------------------------------


def open_nuscenes(root: Path, version: str) -> NuScenes:
    """Load the nuScenes tables of ``version`` under ``root``.

    Raises FileNotFoundError naming the first missing folder, table, map mask,
    lidarseg/panoptic folder or label file, and ValueError naming a table that is not valid
    JSON or a record whose token no table holds, rather than the devkit's bare assertion,
    KeyError or JSON error (:func:`gpicture.data.nuscenes_tables.load_error`).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: missing nuScenes root folder")
    table_root = root / version
    if not table_root.is_dir():
        raise FileNotFoundError(f"{table_root}: missing nuScenes version folder")
    for name in TABLES:
        path = table_root / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing nuScenes table")
    try:
        with open(table_root / "map.json") as f:
            maps = json.load(f)
    except ValueError as exc:
        raise load_error(root, version, exc) from None
    for rec in maps:
        path = root / rec["filename"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing nuScenes map mask (listed in {table_root / 'map.json'})")
    for task in ("lidarseg", "panoptic"):
        if (table_root / f"{task}.json").is_file() and not (root / task / version).is_dir():
            raise FileNotFoundError(f"{root / task / version}: missing nuScenes {task} folder "
                                    f"(the table {table_root / f'{task}.json'} exists)")
    from nuscenes.nuscenes import NuScenes  # lazy: the devkit only to read nuScenes

    try:
        return NuScenes(version=version, dataroot=str(root), verbose=False)
    except (AssertionError, KeyError, ValueError) as exc:
        raise load_error(root, version, exc) from None


def _get(nusc: NuScenes, table: str, token: str, referrer: str) -> dict:
    """``nusc.get(table, token)``; a token no record holds is a ValueError naming the table file
    and who refers to it (the devkit's bare KeyError names neither)."""
    try:
        return nusc.get(table, token)
    except KeyError:
        raise ValueError(f"{Path(nusc.table_root) / f'{table}.json'}: no record {token!r} "
                         f"(referred to by {referrer}): a dangling token") from None


def split_sample_tokens(nusc: NuScenes, split: str) -> list[str]:
    """Keyframe sample tokens of an official split (``create_splits_scenes()``).

    Scenes in the order of the split's list (by name), samples in time order. Scenes of the
    split that the dataset lacks are skipped. The split must match the dataset version:
    ``mini_*`` needs v1.0-mini, ``train``/``val``/``train_*`` v1.0-trainval, ``test`` v1.0-test.
    """
    from nuscenes.utils.splits import create_splits_scenes  # lazy: the devkit

    splits = create_splits_scenes()
    if split not in splits:
        raise ValueError(f"unknown nuScenes split {split!r}; valid: {', '.join(sorted(splits))}")
    need = _SPLIT_VERSION.get(split)
    if need is None:  # a split the devkit added that we cannot map to a version
        raise ValueError(f"nuScenes split {split!r} cannot be mapped to a dataset version")
    if not nusc.version.endswith(need):
        raise ValueError(f"nuScenes split {split!r} needs a *{need} version, not {nusc.version!r}")
    by_name = {s["name"]: s for s in nusc.scene}
    tokens: list[str] = []
    for name in splits[split]:
        scene = by_name.get(name)
        if scene is None:
            continue
        samples = []
        token = scene["first_sample_token"]
        while token:
            sample = _get(nusc, "sample", token, f"scene {name}'s sample chain")
            samples.append(sample)
            token = sample["next"]
        samples.sort(key=lambda s: s["timestamp"])  # the chain is in time order; make sure
        tokens.extend(s["token"] for s in samples)
    return tokens


# ---------------------------------------------------------------------------------------
# Points
# ---------------------------------------------------------------------------------------


def _bin_points(path: Path) -> int:
    """Number of points of a .pcd.bin file (5 float32 each: x, y, z, intensity, ring)."""
    size = os.stat(path).st_size  # FileNotFoundError names the path
    if size % (4 * POINT_DIMS):
        raise ValueError(f"{path}: {size} bytes is not a whole number of {POINT_DIMS}-float32 points")
    return size // (4 * POINT_DIMS)


def _read_bin_into(path: Path, out: np.ndarray) -> np.ndarray:
    """Read a .pcd.bin file of ``len(out)`` points into ``out`` (a C-contiguous (n, 5) float32 array)."""
    with open(path, "rb") as f:
        got = f.readinto(memoryview(out).cast("B"))
    if got != out.nbytes:
        raise ValueError(f"{path}: read {got} of {out.nbytes} bytes (file changed while reading?)")
    return out


def _keep_mask(scan: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points kept (every value finite, not within MIN_DISTANCE in both |x| and |y|: remove_close)
    and the points with a non-finite coordinate, intensity or ring."""
    x, y = scan[:, 0], scan[:, 1]
    keep = (np.abs(x) >= MIN_DISTANCE) | (np.abs(y) >= MIN_DISTANCE)  # = not remove_close's mask for finite x, y
    if np.isfinite(scan).all():  # the usual case: one fast pass over the contiguous buffer
        return keep, np.zeros(len(scan), dtype=bool)
    nonfinite = ~np.isfinite(scan).all(axis=1)
    return keep & ~nonfinite, nonfinite


def _compress_rows(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``a[mask]`` for a C-contiguous 2D array, several times faster (rows as one opaque item)."""
    rows = a.view(np.dtype((np.void, a.shape[1] * a.itemsize))).ravel()
    return rows[mask].view(a.dtype).reshape(-1, a.shape[1])


def _matrix(rec: dict, inverse: bool) -> np.ndarray:
    from nuscenes.utils.geometry_utils import transform_matrix  # lazy: the devkit

    return transform_matrix(rec["translation"], Quaternion(rec["rotation"]), inverse=inverse)


def _pose_record(nusc: NuScenes, table: str, token: str, sd: dict) -> dict:
    """The ``ego_pose`` / ``calibrated_sensor`` record of sample_data ``sd``, refused (the
    ``poses`` policy: error only) when its translation or rotation is not finite."""
    rec = _get(nusc, table, token, f"sample_data {sd['token']}")
    values = np.asarray([*rec["translation"], *rec["rotation"]], dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"{Path(nusc.table_root) / f'{table}.json'}: record {token} (sample_data {sd['token']}): "
                         "non-finite translation or rotation")
    return rec


def _lidarseg_labels(nusc: NuScenes, sd_token: str, n_points: int) -> np.ndarray | None:
    if not hasattr(nusc, "lidarseg"):
        return None
    try:
        rec = nusc.get("lidarseg", sd_token)  # lidarseg tokens are their sample_data tokens
    except KeyError:
        rec = next((r for r in nusc.lidarseg if r["sample_data_token"] == sd_token), None)
        if rec is None:
            return None
    path = Path(nusc.dataroot) / rec["filename"]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing lidarseg label file (listed in {Path(nusc.table_root) / 'lidarseg.json'})")
    labels = np.fromfile(path, dtype=np.uint8)
    if len(labels) != n_points:
        raise ValueError(f"{path}: {len(labels)} lidarseg labels for {n_points} points")
    known = np.zeros(256, dtype=bool)
    known[[i for i in nusc.lidarseg_idx2name_mapping if 0 <= i < 256]] = True
    bad = ~known[labels]
    if bad.any():
        raise ValueError(f"{path}: lidarseg class index {int(labels[bad][0])} is not in the category table "
                         f"({Path(nusc.table_root) / 'category.json'}: indices {min(nusc.lidarseg_idx2name_mapping)}.."
                         f"{max(nusc.lidarseg_idx2name_mapping)}); {int(bad.sum())} such labels")
    return labels


# ---------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------


def _quat_inv(q: np.ndarray) -> np.ndarray:
    return q * np.array([1.0, -1.0, -1.0, -1.0]) / np.sum(q * q)


def _box_velocity(nusc: NuScenes, ann: dict) -> np.ndarray:
    try:
        return nusc.box_velocity(ann["token"])
    except KeyError as exc:  # a prev / next annotation token that no record holds
        raise ValueError(f"{Path(nusc.table_root) / 'sample_annotation.json'}: record {ann['token']}: its prev / next "
                         f"annotation {exc.args[0] if exc.args else '?'!r} is not in the table (a dangling token)") from None


def _boxes(nusc: NuScenes, sample: dict, lidar_from_global: np.ndarray, q_lidar_from_global: np.ndarray) -> dict:
    """The keyframe's annotations as box arrays in its LiDAR frame; a box with a non-finite
    centre, size or rotation (or an infinite velocity) is refused (``boxes`` policy: error)."""
    anns = [_get(nusc, "sample_annotation", t, f"sample {sample['token']}") for t in sample["anns"]]
    m = len(anns)
    centre = np.array([a["translation"] for a in anns], dtype=np.float64).reshape(m, 3)
    size = np.array([a["size"] for a in anns], dtype=np.float64).reshape(m, 3)  # w, l, h
    rot = np.array([a["rotation"] for a in anns], dtype=np.float64).reshape(m, 4)
    centre = centre @ lidar_from_global[:3, :3].T + lidar_from_global[:3, 3]
    q = quat_mul(q_lidar_from_global, rot)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    yaw = np.arctan2(2 * (q[:, 0] * q[:, 3] - q[:, 1] * q[:, 2]), 1 - 2 * (q[:, 2] ** 2 + q[:, 3] ** 2))
    vel = np.array([_box_velocity(nusc, a) for a in anns], dtype=np.float64).reshape(m, 3)
    vel = vel @ lidar_from_global[:3, :3].T
    boxes = np.concatenate([centre, size[:, [1, 0, 2]], yaw[:, None]], axis=1).astype(np.float32)
    bad = bad_box_rows(boxes, vel) | ~np.isfinite(rot).all(axis=1)
    if bad.any():
        raise ValueError(f"{Path(nusc.table_root) / 'sample_annotation.json'}: record {anns[int(np.argmax(bad))]['token']}: "
                         f"non-finite translation, size or rotation ({int(bad.sum())} such boxes in sample "
                         f"{sample['token']}; convert.nonfinite.boxes: error)")
    return {
        "boxes": boxes,
        "box_names": np.array([a["category_name"] for a in anns], dtype=str),
        "box_velocity": vel[:, :2].astype(np.float32),
        "box_num_points": np.array([a["num_lidar_pts"] for a in anns], dtype=np.int32),
        "box_ids": np.array([a["instance_token"] for a in anns], dtype=str),
        "box_difficulty": np.zeros(m, dtype=np.int8),
    }


# ---------------------------------------------------------------------------------------
# A keyframe
# ---------------------------------------------------------------------------------------


def occupancy_path(nusc: NuScenes, sample: dict) -> Path:
    """Where nuScenes-Occupancy (OpenOccupancy) keeps the keyframe's occupied voxels."""
    return (Path(nusc.dataroot) / "nuScenes-Occupancy" / f"scene_{sample['scene_token']}" / "occupancy"
            / f"{sample['data'][LIDAR]}.npy")


def read_sample(nusc: NuScenes, sample_token: str, sweeps: int, labels: bool = True,
                nonfinite: NonFinitePolicy = DEFAULT_POLICY) -> RawFrame:
    """The keyframe ``sample_token``: LIDAR_TOP points of it and its ``sweeps - 1`` previous sweeps
    in its LiDAR frame, with lidarseg labels, boxes and occupancy unless ``labels`` is False;
    NaN / inf values as ``nonfinite`` says (see the module docstring)."""
    if sweeps < 1:
        raise ValueError(f"sweeps = {sweeps}: at least 1 (the keyframe)")
    root = Path(nusc.dataroot)
    sample = _get(nusc, "sample", sample_token, "the split")
    sd_token = sample["data"][LIDAR]
    ref_sd = _get(nusc, "sample_data", sd_token, f"sample {sample_token}")
    ref_cs = _pose_record(nusc, "calibrated_sensor", ref_sd["calibrated_sensor_token"], ref_sd)
    ref_pose = _pose_record(nusc, "ego_pose", ref_sd["ego_pose_token"], ref_sd)
    ref_time = 1e-6 * ref_sd["timestamp"]
    ref_from_car = _matrix(ref_cs, inverse=True)
    car_from_global = _matrix(ref_pose, inverse=True)

    # The sweeps from_file_multisweep visits: the keyframe, then back along `prev`.
    chain = [ref_sd]
    while len(chain) < sweeps and chain[-1]["prev"] != "":
        chain.append(_get(nusc, "sample_data", chain[-1]["prev"], f"sample_data {chain[-1]['token']} (prev)"))
    paths = [root / sd["filename"] for sd in chain]
    counts = [_bin_points(p) for p in paths]
    if counts[0] == 0:
        raise EmptyFrameError(f"{paths[0]}: empty keyframe point cloud (0 points) of sample {sample_token}")

    # One sweep at a time (its buffers stay in cache), into outputs sized for every point.
    total, biggest = sum(counts), max(counts)
    points = np.empty((total, 3), dtype=np.float32)
    intensity = np.empty(total, dtype=np.float32)
    ring = np.empty(total, dtype=np.float32)
    time_lag = np.empty(total, dtype=np.float32)
    scan_buf = np.empty((biggest, POINT_DIMS), dtype=np.float32)
    hom = np.empty((biggest, 4), dtype=np.float64)
    hom[:, 3] = 1.0
    moved = np.empty((biggest, 3), dtype=np.float64)
    key_labels = None  # the keyframe's lidarseg labels of the points kept
    dropped = 0
    n = 0
    for i, (sd, path, count) in enumerate(zip(chain, paths, counts)):
        scan = _read_bin_into(path, scan_buf[:count])
        keep, bad = _keep_mask(scan)
        if bad.any() and nonfinite.points == ERROR:
            raise nonfinite_points_error(str(path), int(np.count_nonzero(bad)), count)
        dropped += int(np.count_nonzero(bad))
        if i == 0 and labels:
            raw_labels = _lidarseg_labels(nusc, sd_token, count)
            if raw_labels is not None:
                key_labels = raw_labels[keep]
        kept = _compress_rows(scan, keep)
        k = len(kept)
        if i == 0 and k == 0:
            raise ValueError(f"{path}: no keyframe point is finite and at least {MIN_DISTANCE} m away")
        pose = _pose_record(nusc, "ego_pose", sd["ego_pose_token"], sd)
        cs = _pose_record(nusc, "calibrated_sensor", sd["calibrated_sensor_token"], sd)
        # The same float64 matrix as from_file_multisweep, applied as PointCloud.transform does.
        matrix = reduce(np.dot, [ref_from_car, car_from_global, _matrix(pose, inverse=False),
                                 _matrix(cs, inverse=False)])
        hom[:k, :3] = kept[:, :3]
        np.matmul(hom[:k], matrix[:3].T, out=moved[:k])
        points[n:n + k] = moved[:k]
        intensity[n:n + k] = kept[:, 3]
        ring[n:n + k] = kept[:, 4]
        time_lag[n:n + k] = ref_time - 1e-6 * sd["timestamp"]  # positive difference, as the devkit's `times`
        n += k
    points, intensity, ring, time_lag = points[:n], intensity[:n], ring[:n], time_lag[:n]
    seg = None
    if key_labels is not None:
        seg = np.full(n, UNLABELLED, dtype=np.uint8)
        seg[: len(key_labels)] = key_labels

    global_from_lidar = _matrix(ref_pose, inverse=False) @ _matrix(ref_cs, inverse=False)
    lidar_from_global = ref_from_car @ car_from_global
    q_lidar_from_global = quat_mul(_quat_inv(np.asarray(ref_cs["rotation"], dtype=np.float64)),
                                    _quat_inv(np.asarray(ref_pose["rotation"], dtype=np.float64)))

    occ_path = occupancy_path(nusc, sample)
    occupancy = None
    if labels and occ_path.is_file():
        occupancy = read_openoccupancy_rows(occ_path)

    scene = _get(nusc, "scene", sample["scene_token"], f"sample {sample_token}")
    frame = RawFrame(
        frame_id=sample_token,
        scene=scene["name"],
        timestamp_us=int(sample["timestamp"]),
        pose=global_from_lidar,
        points=points,
        features={
            "intensity": intensity,
            "ring": ring,
            "time_lag": time_lag,
        },
        seg_labels=seg,
        occupancy=occupancy,
        extra={"dropped_nonfinite": dropped, "lidar_token": sd_token, "sweeps_read": len(chain)},
        **(_boxes(nusc, sample, lidar_from_global, q_lidar_from_global) if labels
           else {f.name: None for f in level_fields(BOX)}),
    )
    frame.validate(f"nuScenes sample {sample_token}")
    return frame
