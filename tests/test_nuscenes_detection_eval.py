"""nuScenes detection submissions from LiDAR-frame boxes, scored by the official devkit:
the store's ground truth round-trips to the devkit's boxes and scores mAP 1."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.splits import create_splits_scenes
from pyquaternion import Quaternion

from gpicture.data.convert import ConvertConfig, convert
from gpicture.data.spec import NUSCENES
from gpicture.data.store import VoxelStore
from gpicture.data.voxelize import VoxelGrid
from gpicture.eval.nuscenes_detection import evaluate_submission
from gpicture.eval.nuscenes_submission import (
    DETECTION_CLASSES,
    default_attribute,
    lidar_boxes_to_submission,
    store_ground_truth,
    write_submission,
)
from gpicture.eval.predictions import DetectionPrediction
from gpicture.synth.generate import SynthConfig, generate_nuscenes

VERSION = "v1.0-mini"
GRID = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.4, 0.4, 0.4))


def _pred(token: str, boxes, labels, scores, velocity=None, index: int = 0) -> DetectionPrediction:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    vel = np.zeros((len(boxes), 2)) if velocity is None else np.asarray(velocity, dtype=np.float64)
    return DetectionPrediction(token, index, boxes, np.asarray(scores, dtype=np.float64),
                               np.asarray(labels, dtype=object), vel)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("nusdet")
    root = base / "nuscenes"
    generate_nuscenes(SynthConfig(scenes=3, frames=2, sweeps_before=2, seed=5, occupancy=False, workers=2), root)
    store_path = base / "val.zarr"
    convert(ConvertConfig("nuscenes", root, "mini_val", GRID, sweeps=2, workers=2), store_path)
    store = VoxelStore.open(store_path)
    nusc = NuScenes(version=VERSION, dataroot=str(root), verbose=False)
    sub = lidar_boxes_to_submission(store_ground_truth(store, NUSCENES), store.pose)
    return {"root": root, "store": store, "nusc": nusc, "sub": sub, "base": base}


def test_classes_and_category_mapping() -> None:
    assert DETECTION_CLASSES == ("car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian",
                                 "motorcycle", "bicycle", "traffic_cone", "barrier")
    assert tuple(NUSCENES.detection_classes) == tuple(n for g in NUSCENES.detection_groups for n in g)
    assert sorted(NUSCENES.detection_classes) == sorted(DETECTION_CLASSES)
    cmap = NUSCENES.detection_class_map()
    assert cmap["vehicle.car"] == "car"
    assert cmap["human.pedestrian.police_officer"] == "pedestrian"
    assert cmap["movable_object.trafficcone"] == "traffic_cone"
    assert cmap["vehicle.bicycle"] == "bicycle"
    assert "animal" in NUSCENES.box_types and "static_object.bicycle_rack" in NUSCENES.box_types
    assert cmap.get("animal") is None and cmap.get("static_object.bicycle_rack") is None
    assert set(cmap.values()) == set(DETECTION_CLASSES)
    assert all(category_to_detection_name(c) == d for c, d in cmap.items())
    assert default_attribute("car", 3.0) == "vehicle.moving" and default_attribute("car", 0.0) == "vehicle.parked"
    assert default_attribute("bus", 0.1) == "vehicle.stopped"
    assert default_attribute("pedestrian", 1.0) == "pedestrian.moving"
    assert default_attribute("pedestrian", 0.0) == "pedestrian.standing"
    assert default_attribute("bicycle", 1.0) == "cycle.with_rider"
    assert default_attribute("motorcycle", 0.0) == "cycle.without_rider"
    assert default_attribute("barrier", 5.0) == "" and default_attribute("traffic_cone", 0.0) == ""


def test_frame_conversion_geometry() -> None:
    """A hand-made pose: translation, yaw composition and velocity rotation."""
    rot = Quaternion(axis=[0, 0, 1], angle=0.7) * Quaternion(axis=[1, 0, 0], angle=0.01)
    pose = np.eye(4)
    pose[:3, :3] = rot.rotation_matrix
    pose[:3, 3] = [100.0, -50.0, 2.0]
    frame = _pred("t", [[1.0, 2.0, 0.5, 4.0, 2.0, 1.5, 0.3]], ["car"], [0.9], velocity=[[1.0, np.nan]], index=7)
    poses = {7: pose}
    box = lidar_boxes_to_submission([frame], poses.__getitem__)["results"]["t"][0]
    np.testing.assert_allclose(box["translation"], pose[:3, :3] @ [1.0, 2.0, 0.5] + pose[:3, 3], atol=1e-9)
    assert box["size"] == [2.0, 4.0, 1.5]
    expect = rot * Quaternion(axis=[0, 0, 1], angle=0.3)
    assert Quaternion(box["rotation"]) == expect or Quaternion(box["rotation"]) == -expect
    np.testing.assert_allclose(box["velocity"], (pose[:3, :3] @ [1.0, 0.0, 0.0])[:2], atol=1e-9)
    assert box["attribute_name"] == "vehicle.moving" and box["detection_score"] == 0.9
    # the best boxes come first and at most 500 are kept
    many = _pred("u", np.zeros((600, 7)), ["pedestrian"] * 600, np.linspace(0, 1, 600))
    res = lidar_boxes_to_submission([many], lambda i: np.eye(4))["results"]["u"]
    assert len(res) == 500 and res[0]["detection_score"] == 1.0 and res[0]["detection_name"] == "pedestrian"
    assert all(a["detection_score"] >= b["detection_score"] for a, b in itertools.pairwise(res))
    assert len(lidar_boxes_to_submission([many], lambda i: np.eye(4), max_boxes_per_sample=None)["results"]["u"]) == 600
    empty = lidar_boxes_to_submission([_pred("e", np.zeros((0, 7)), [], [])], lambda i: np.eye(4),
                                      meta={"use_camera": True})
    assert empty["results"] == {"e": []} and empty["meta"]["use_lidar"] and empty["meta"]["use_camera"]
    with pytest.raises(ValueError, match="unknown detection names"):
        lidar_boxes_to_submission([dataclasses.replace(frame, labels=np.array(["vehicle.car"], dtype=object))],
                                  poses.__getitem__)
    with pytest.raises(ValueError, match="unknown detection names"):  # labels are names, not indices
        lidar_boxes_to_submission([dataclasses.replace(frame, labels=np.array([0]))], poses.__getitem__)
    with pytest.raises(ValueError, match="twice"):
        lidar_boxes_to_submission([frame, frame], poses.__getitem__)


def test_submission_round_trips_to_devkit_boxes(data) -> None:
    nusc, sub = data["nusc"], data["sub"]
    val_scenes = set(create_splits_scenes()["mini_val"])
    val_tokens = {s["token"] for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in val_scenes}
    assert set(sub["results"]) == val_tokens
    checked = 0
    for token, boxes in sub["results"].items():
        sample = nusc.get("sample", token)
        expected = []
        for ann_token in sample["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            if category_to_detection_name(ann["category_name"]) is not None and ann["num_lidar_pts"] > 0:
                expected.append(nusc.get_box(ann_token))
        assert len(boxes) == len(expected)
        for box in boxes:
            centre = np.array(box["translation"])
            ref = min(expected, key=lambda b: np.linalg.norm(b.center - centre))
            np.testing.assert_allclose(centre, ref.center, atol=1e-3)
            np.testing.assert_allclose(box["size"], ref.wlh, atol=1e-3)
            dyaw = Quaternion(box["rotation"]).yaw_pitch_roll[0] - ref.orientation.yaw_pitch_roll[0]
            assert abs((dyaw + np.pi) % (2 * np.pi) - np.pi) < 1e-3
            ann = nusc.get("sample_annotation", ref.token)
            assert box["detection_name"] == category_to_detection_name(ann["category_name"])
            vel = nusc.box_velocity(ref.token)[:2]
            if np.isfinite(vel).all():
                np.testing.assert_allclose(box["velocity"], vel, atol=1e-3)
            checked += 1
    assert checked > 20


def test_box_only_reads_match_full_frame_reads(data) -> None:
    """VoxelStore.frame_boxes / pose (no point decoding) equal the whole-frame read."""
    store = data["store"]
    for i in range(len(store)):
        fr = store[i]
        boxes, names, vel, npts = store.frame_boxes(i)
        np.testing.assert_array_equal(boxes, fr.boxes)
        np.testing.assert_array_equal(vel, fr.box_velocity)
        np.testing.assert_array_equal(npts, fr.box_num_points)
        assert list(names) == list(fr.box_names) and len(names) > 0
        np.testing.assert_array_equal(store.pose(i), fr.pose)


def test_ground_truth_scores_map_1(data, tmp_path) -> None:
    path = tmp_path / "sub" / "gt.json"
    write_submission(data["sub"], path)
    assert json.loads(path.read_text()) == json.loads(json.dumps(data["sub"]))
    assert [p.name for p in path.parent.iterdir()] == ["gt.json"]  # no temporary left behind
    out = tmp_path / "eval"
    m = evaluate_submission(data["root"], VERSION, "mini_val", path, out, nusc=data["nusc"])
    assert m["mAP"] == pytest.approx(1.0)
    assert m["NDS"] > 0.95
    assert m["tp_errors"]["trans_err"] == pytest.approx(0.0, abs=1e-3)
    assert m["tp_errors"]["scale_err"] == pytest.approx(0.0, abs=1e-3)
    assert m["tp_errors"]["orient_err"] == pytest.approx(0.0, abs=1e-3)
    assert m["tp_errors"]["vel_err"] == pytest.approx(0.0, abs=1e-3)
    assert set(m["per_class_AP"]) == set(DETECTION_CLASSES)
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["mean_ap"] == pytest.approx(m["mAP"]) and summary["nd_score"] == pytest.approx(m["NDS"])


def test_shifted_boxes_score_lower(data, tmp_path) -> None:
    sub = copy.deepcopy(data["sub"])
    for boxes in sub["results"].values():
        for b in boxes:
            b["translation"][0] += 3.0
    path = tmp_path / "shifted.json"
    write_submission(sub, path)
    m = evaluate_submission(data["root"], VERSION, "mini_val", path, tmp_path / "eval", nusc=data["nusc"])
    assert m["mAP"] < 0.8
    assert m["NDS"] < 0.8


def test_bad_submissions_name_the_file(data, tmp_path) -> None:
    def evaluate(path: Path) -> dict:
        return evaluate_submission(data["root"], VERSION, "mini_val", path, tmp_path / "eval", nusc=data["nusc"])

    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"meta": {}, "results": {')
    with pytest.raises(ValueError, match="corrupt.json.*JSON"):
        evaluate(corrupt)
    no_results = tmp_path / "no_results.json"
    no_results.write_text(json.dumps({"meta": {}}))
    with pytest.raises(ValueError, match="no_results.json.*results"):
        evaluate(no_results)
    foreign = tmp_path / "foreign.json"
    sub = copy.deepcopy(data["sub"])
    sub["results"]["not-a-token"] = []
    write_submission(sub, foreign)
    with pytest.raises(ValueError, match="foreign.json.*not in the eval set"):
        evaluate(foreign)
    short = tmp_path / "short.json"
    sub = copy.deepcopy(data["sub"])
    sub["results"].pop(next(iter(sub["results"])))
    write_submission(sub, short)
    with pytest.raises(ValueError, match="short.json.*no entry"):
        evaluate(short)
    bad_name = tmp_path / "bad_name.json"
    sub = copy.deepcopy(data["sub"])
    next(b for bs in sub["results"].values() for b in bs)["detection_name"] = "vehicle.car"
    write_submission(sub, bad_name)
    with pytest.raises(ValueError, match="bad_name.json.*detection_name"):
        evaluate(bad_name)
    with pytest.raises(ValueError, match="missing.json.*does not exist"):
        evaluate(tmp_path / "missing.json")
