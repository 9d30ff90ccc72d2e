"""`gpicture synth nuscenes`: the official devkit loads the generated data and scores
its ground truth perfectly — proof that formats and splits are right."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box
from nuscenes.utils.splits import create_splits_scenes
from nuscenes_gt import ground_truth_submission

from gpicture.data.taxonomy import NUSCENES_RAW_TO_16
from gpicture.synth.generate import SynthConfig, generate_nuscenes

VERSION = "v1.0-mini"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "nuscenes"
    cfg = SynthConfig(scenes=3, frames=3, seed=3, sweeps_before=3, workers=2)
    summary = generate_nuscenes(cfg, out)
    assert summary == {"scenes": 3, "train": 1, "val": 2, "sweeps": 3 * (3 + 2 * 10 + 1), "keyframes": 9}
    return out


@pytest.fixture(scope="module")
def nusc(root) -> NuScenes:
    return NuScenes(version=VERSION, dataroot=str(root), verbose=False)


def _sensor_points(nusc: NuScenes, sd_token: str) -> np.ndarray:
    sd = nusc.get("sample_data", sd_token)
    return LidarPointCloud.from_file(str(Path(nusc.dataroot) / sd["filename"])).points


def test_devkit_loads_scenes_in_the_official_splits(nusc) -> None:
    splits = create_splits_scenes()
    names = [s["name"] for s in nusc.scene]
    assert len(names) == 3
    assert names[0] in splits["mini_train"] and set(names[1:]) == set(splits["mini_val"])
    assert len(nusc.sample) == 9
    assert len(nusc.sample_data) == 72
    assert all(s["nbr_samples"] == 3 for s in nusc.scene)


def test_sweeps_have_realistic_point_counts(nusc) -> None:
    counts = [_sensor_points(nusc, sd["token"]).shape[1] for sd in nusc.sample_data[:10]]
    assert all(25_000 < c < 35_000 for c in counts), counts  # real nuScenes: about 34k


def test_multisweep_accumulates_previous_sweeps(nusc) -> None:
    sample = nusc.sample[1]
    pc, times = LidarPointCloud.from_file_multisweep(nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=10)
    single = _sensor_points(nusc, sample["data"]["LIDAR_TOP"]).shape[1]
    assert pc.points.shape[1] > 8 * single
    assert np.isclose(times.max(), 0.45, atol=0.01) and times.min() == 0.0
    # A static world: the ground seen in the accumulated sweeps stays at the sensor's height.
    near = np.linalg.norm(pc.points[:2], axis=0) < 12
    ground_z = np.median(pc.points[2, near & (pc.points[2] < -1.0)])
    assert -1.95 < ground_z < -1.7


def test_lidarseg_one_label_per_point(nusc) -> None:
    for rec in nusc.lidarseg:
        labels = np.fromfile(Path(nusc.dataroot) / rec["filename"], dtype=np.uint8)
        assert len(labels) == _sensor_points(nusc, rec["sample_data_token"]).shape[1]
        assert labels.max() < 32 and len(np.unique(labels)) >= 8


def test_points_in_box_equals_num_lidar_pts(nusc) -> None:
    checked = nonzero = 0
    for sample in nusc.sample:
        sd_token = sample["data"]["LIDAR_TOP"]
        pts = _sensor_points(nusc, sd_token)[:3]
        _, boxes, _ = nusc.get_sample_data(sd_token)  # boxes in the sensor frame, as the devkit does
        for box in boxes:
            ann = nusc.get("sample_annotation", box.token)
            assert int(points_in_box(box, pts).sum()) == ann["num_lidar_pts"], ann["token"]
            checked += 1
            nonzero += ann["num_lidar_pts"] > 0
    assert checked > 50 and nonzero > 30


def test_every_detection_class_is_annotated_in_val(nusc) -> None:
    from nuscenes.eval.detection.utils import category_to_detection_name

    val_scene = nusc.scene[1]["token"]  # each scene has every class; check one val scene
    names = {
        category_to_detection_name(a["category_name"])
        for a in nusc.sample_annotation
        if nusc.get("sample", a["sample_token"])["scene_token"] == val_scene and a["num_lidar_pts"] > 0
    }
    assert len(names - {None}) == 10


def test_detection_eval_of_ground_truth_gives_map_1(nusc, tmp_path) -> None:
    from nuscenes.eval.detection.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    val_names = set(create_splits_scenes()["mini_val"])
    sub = ground_truth_submission(nusc, val_names)
    path = tmp_path / "gt_submission.json"
    path.write_text(json.dumps(sub))
    ev = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(path), "mini_val", str(tmp_path / "eval"), verbose=False)
    metrics, _ = ev.evaluate()
    summary = metrics.serialize()
    assert summary["mean_ap"] == pytest.approx(1.0)
    assert all(ap == pytest.approx(1.0) for ap in summary["mean_dist_aps"].values())
    assert summary["tp_errors"]["trans_err"] == pytest.approx(0.0, abs=1e-6)


def test_lidarseg_eval_of_true_labels_gives_miou_1(nusc, tmp_path) -> None:
    from nuscenes.eval.lidarseg.evaluate import LidarSegEval

    val_scenes = {s["token"] for s in nusc.scene if s["name"] in create_splits_scenes()["mini_val"]}
    out = tmp_path / "results"
    (out / "lidarseg" / "mini_val").mkdir(parents=True)
    (out / "mini_val").mkdir(parents=True)
    meta = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}
    (out / "mini_val" / "submission.json").write_text(json.dumps({"meta": meta}))
    for sample in nusc.sample:
        if sample["scene_token"] not in val_scenes:
            continue
        sd = sample["data"]["LIDAR_TOP"]
        raw = np.fromfile(Path(nusc.dataroot) / nusc.get("lidarseg", sd)["filename"], dtype=np.uint8)
        NUSCENES_RAW_TO_16[raw].astype(np.uint8).tofile(out / "lidarseg" / "mini_val" / f"{sd}_lidarseg.bin")
    ev = LidarSegEval(nusc, str(out), eval_set="mini_val", verbose=False)
    result = ev.evaluate()
    assert result["miou"] == pytest.approx(1.0)
    assert sum(1 for v in result["iou_per_class"].values() if v == v) >= 12  # classes present (not NaN)


def test_occupancy_files_agree_with_the_labelled_points(nusc) -> None:
    root = Path(nusc.dataroot)
    sample = nusc.sample[0]
    sd = sample["data"]["LIDAR_TOP"]
    occ = np.load(root / "nuScenes-Occupancy" / f"scene_{sample['scene_token']}" / "occupancy" / f"{sd}.npy")
    assert occ.ndim == 2 and occ.shape[1] == 4
    z, y, x, lab = occ.T
    assert (z >= 0).all() and (z < 40).all() and (y < 512).all() and (x < 512).all()
    assert set(np.unique(lab)) <= set(range(1, 17)) and len(np.unique(lab)) >= 10
    vol = np.zeros((40, 512, 512), np.uint8)
    vol[z, y, x] = lab
    pts = _sensor_points(nusc, sd)[:3].T
    labels = NUSCENES_RAW_TO_16[np.fromfile(root / nusc.get("lidarseg", sd)["filename"], dtype=np.uint8)]
    v = np.floor((pts - [-51.2, -51.2, -5.0]) / 0.2).astype(int)
    inside = (v >= 0).all(1) & (v < [512, 512, 40]).all(1) & (labels > 0)
    v, labels = v[inside], labels[inside]
    # Each labelled point lies in (or next to: range noise) an occupied voxel of its class.
    hit = np.zeros(len(v), bool)
    for dz in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                w = np.clip(v + [dx, dy, dz], 0, [511, 511, 39])
                hit |= vol[w[:, 2], w[:, 1], w[:, 0]] == labels
    assert hit.mean() > 0.95, hit.mean()
