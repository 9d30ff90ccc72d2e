"""The nuScenes writer: the official devkit loads what it writes, and the data agree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nuscenes.eval.common.data_classes import EvalBoxes
from nuscenes.eval.detection.constants import DETECTION_NAMES
from nuscenes.eval.detection.data_classes import DetectionBox
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box
from nuscenes.utils.splits import create_splits_scenes
from nuscenes_gt import ground_truth_submission
from pyquaternion import Quaternion

from gpicture.data.taxonomy import NUSCENES_INDEX
from gpicture.synth.nuscenes_writer import write_nuscenes
from gpicture.synth.records import NuscenesScene, NuscenesSweep, ObjectStates

VERSION = "v1.0-trainval"
SPLITS = create_splits_scenes()
TRAIN_NAME, VAL_NAME = SPLITS["train"][0], SPLITS["val"][0]
# sweep layout of each scene: a sweep before the first keyframe and one after the last
KEYFRAMES = (False, True, False, False, True, False, True, False)


def rot(axis: str, a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def pose(r: np.ndarray, t) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = r, t
    return m


def apply(m: np.ndarray, p: np.ndarray) -> np.ndarray:
    return p @ m[:3, :3].T + m[:3, 3]


EGO_FROM_SENSOR = pose(rot("z", -np.pi / 2), [0.94, 0.0, 1.84])

# objects in the ego frame of their keyframe: class, centre, (l, w, h), yaw offset, attribute, visibility
OBJECTS = {
    7: ("car", [10.0, 3.0, 0.9], (4.5, 2.0, 1.6), 0.4, "vehicle.moving", 4),
    8: ("pedestrian", [-6.0, -4.0, 0.9], (0.7, 0.6, 1.8), -1.0, "pedestrian.standing", 3),
    9: ("barrier", [3.0, -9.0, 0.5], (0.5, 2.5, 1.0), 0.0, "", 1),  # no point: dropped from the GT
}


def make_scene(name: str, location: str, t0: int, seed: int, world_xy) -> tuple[NuscenesScene, dict]:
    """A scene of 8 sweeps (3 keyframes); returns it and the world coordinates of every sweep's points."""
    rng = np.random.default_rng(seed)
    sweeps, world_points = [], {}
    k = 0
    for i, key in enumerate(KEYFRAMES):
        ts = t0 + i * 50_000
        world_from_ego = pose(rot("z", 0.3 + 0.05 * i) @ rot("y", 0.02) @ rot("x", -0.01),
                              [world_xy[0] + 0.5 * i, world_xy[1] + 0.1 * i, 0.5])
        world_from_sensor = world_from_ego @ EGO_FROM_SENSOR
        # background: a ring 20..40 m from the car, far from every box
        n_bg = 200 + 10 * i
        ang, rad = rng.uniform(0, 2 * np.pi, n_bg), rng.uniform(20, 40, n_bg)
        pts_ego = [np.stack([rad * np.cos(ang), rad * np.sin(ang), rng.uniform(-0.3, 3.0, n_bg)], 1)]
        labels = [np.full(n_bg, NUSCENES_INDEX["flat.driveable_surface"], np.uint8)]
        objects = None
        if key:
            ids = [7, 8, 9] if k < 2 else [7, 9]  # the pedestrian leaves before the last keyframe
            center, size, yaw, attr, vis, npts, cls = [], [], [], [], [], [], []
            for iid in ids:
                c, (l, w, h), dyaw, a, v = (OBJECTS[iid][1], OBJECTS[iid][2], OBJECTS[iid][3],
                                            OBJECTS[iid][4], OBJECTS[iid][5])
                ego_yaw = 0.3 + 0.05 * i
                box_from_obj = pose(rot("z", dyaw), c)
                n_in = 0 if iid == 9 else 20 + 7 * k + iid
                inside = rng.uniform(-0.4, 0.4, (n_in, 3)) * [l, w, h]
                outside = np.array([[0.65 * l, 0, 0], [-0.65 * l, 0, 0], [0, 0.7 * w, 0], [0, 0, 0.7 * h]])
                pts_ego.append(apply(box_from_obj, np.concatenate([inside, outside])))
                labels.append(np.full(n_in + 4, NUSCENES_INDEX[
                    {"car": "vehicle.car", "pedestrian": "human.pedestrian.adult",
                     "barrier": "movable_object.barrier"}[OBJECTS[iid][0]]], np.uint8))
                # the box in the world frame (yaw about world z, ignoring the small tilt of the car)
                centre_w = apply(world_from_ego, np.array([c]))[0]
                center.append(centre_w)
                size.append((l, w, h))
                yaw.append(ego_yaw + dyaw)
                attr.append(a)
                vis.append(v)
                npts.append(n_in)
                cls.append(OBJECTS[iid][0])
            objects = ObjectStates(
                instance_id=np.array(ids, np.int64), class_name=np.array(cls), center=np.array(center),
                size=np.array(size, float), yaw=np.array(yaw), velocity=np.zeros((len(ids), 3)),
                attribute=np.array(attr), num_points=np.array(npts, np.int64), visibility=np.array(vis, np.int64))
            k += 1
        pts_ego = np.concatenate(pts_ego)
        if key:
            # the boxes are yawed in the world but the car is slightly tilted: rebuild object points from the
            # world boxes so that "inside" is exact in the frame the devkit uses
            pts_world = _rebuild_world_points(pts_ego, world_from_ego, objects, labels)
        else:
            pts_world = apply(world_from_ego, pts_ego)
        pts_sensor = apply(np.linalg.inv(world_from_sensor), pts_world)
        n = len(pts_sensor)
        points = np.concatenate([pts_sensor, rng.uniform(0, 255, (n, 1)), rng.integers(0, 32, (n, 1))], 1)
        occupancy = None
        if key:
            occupancy = np.array([[3, 100, 200, 4], [4, 101, 200, 17]], np.int64) + i
        sweeps.append(NuscenesSweep(
            timestamp_us=ts, is_key_frame=key, world_from_ego=world_from_ego,
            points=points.astype(np.float32), lidarseg=np.concatenate(labels), objects=objects,
            occupancy=occupancy))
        world_points[i] = pts_world
    scene = NuscenesScene(name=name, description=f"synthetic {name}", location=location,
                          ego_from_sensor=EGO_FROM_SENSOR, sweeps=sweeps)
    return scene, world_points


def _rebuild_world_points(pts_ego, world_from_ego, objects, labels):
    """Re-express the object points in their world box frame (yaw about world z) so the boxes are exact."""
    out = [apply(world_from_ego, pts_ego[: len(labels[0])])]
    start = len(labels[0])
    for j in range(len(objects)):
        n = len(labels[j + 1])
        local_ego = pts_ego[start: start + n]
        start += n
        c_ego = OBJECTS[int(objects.instance_id[j])][1]
        dyaw = OBJECTS[int(objects.instance_id[j])][3]
        local = (local_ego - c_ego) @ rot("z", dyaw)  # the point in its box frame
        world_box = pose(rot("z", objects.yaw[j]), objects.center[j])
        out.append(apply(world_box, local))
    return np.concatenate(out)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("nuscenes")
    a, wa = make_scene(TRAIN_NAME, "singapore-onenorth", 1_532_402_927_647_951, 0, (600.0, 1600.0))
    b, wb = make_scene(VAL_NAME, "boston-seaport", 1_533_151_603_547_590, 1, (400.0, 1100.0))
    write_nuscenes([a, b], root, VERSION)
    nusc = NuScenes(VERSION, str(root), verbose=False)
    return root, nusc, {TRAIN_NAME: (a, wa), VAL_NAME: (b, wb)}


def test_devkit_loads_and_counts(written):
    root, nusc, scenes = written
    assert len(nusc.scene) == 2
    assert len(nusc.sample) == 6
    assert len(nusc.sample_data) == 16
    assert len(nusc.sample_annotation) == 2 * (3 + 3 + 2)
    assert len(nusc.instance) == 6
    assert len(nusc.lidarseg) == 6
    assert len(nusc.category) == 32 and len(nusc.attribute) == 8 and len(nusc.visibility) == 4
    assert nusc.lidarseg_idx2name_mapping[17] == "vehicle.car"
    names = {s["name"] for s in nusc.scene}
    assert TRAIN_NAME in SPLITS["train"] and VAL_NAME in SPLITS["val"] and names == {TRAIN_NAME, VAL_NAME}
    for s in nusc.scene:
        assert s["nbr_samples"] == 3
        log = nusc.get("log", s["log_token"])
        assert nusc.get("map", log["map_token"])["log_tokens"] == [log["token"]]
    for inst in nusc.instance:
        anns, tok = [], inst["first_annotation_token"]
        while tok:
            anns.append(tok)
            tok = nusc.get("sample_annotation", tok)["next"]
        assert len(anns) == inst["nbr_annotations"] and anns[-1] == inst["last_annotation_token"]


def test_sample_data_chain_and_files(written):
    root, nusc, scenes = written
    for s in nusc.scene:
        samples, tok = [], s["first_sample_token"]
        while tok:
            samples.append(tok)
            tok = nusc.get("sample", tok)["next"]
        assert len(samples) == 3 and samples[-1] == s["last_sample_token"]
        # walk the whole lidar chain back from the first keyframe and forward to the end
        sd = nusc.get("sample_data", nusc.get("sample", samples[0])["data"]["LIDAR_TOP"])
        while sd["prev"]:
            sd = nusc.get("sample_data", sd["prev"])
        chain = [sd]
        while sd["next"]:
            sd = nusc.get("sample_data", sd["next"])
            chain.append(sd)
        assert [c["is_key_frame"] for c in chain] == list(KEYFRAMES)
        # a sweep belongs to the next keyframe's sample; the trailing one to the last sample
        assert [samples.index(c["sample_token"]) for c in chain] == [0, 0, 1, 1, 1, 2, 2, 2]
        scene, _ = scenes[s["name"]]
        for c, sweep in zip(chain, scene.sweeps):
            assert c["filename"].startswith("samples/LIDAR_TOP/" if sweep.is_key_frame else "sweeps/LIDAR_TOP/")
            assert c["filename"].endswith(f"__LIDAR_TOP__{sweep.timestamp_us}.pcd.bin")
            assert c["timestamp"] == sweep.timestamp_us
            pc = LidarPointCloud.from_file(nusc.get_sample_data_path(c["token"]))
            np.testing.assert_array_equal(pc.points.T, sweep.points[:, :4])


def test_poses_map_points_back_to_world(written):
    root, nusc, scenes = written
    for sd in nusc.sample_data:
        scene_name = nusc.get("scene", nusc.get("sample", sd["sample_token"])["scene_token"])["name"]
        scene, world = scenes[scene_name]
        i = [s.timestamp_us for s in scene.sweeps].index(sd["timestamp"])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        ep = nusc.get("ego_pose", sd["ego_pose_token"])
        pc = LidarPointCloud.from_file(nusc.get_sample_data_path(sd["token"]))
        pc.rotate(Quaternion(cs["rotation"]).rotation_matrix)
        pc.translate(np.array(cs["translation"]))
        pc.rotate(Quaternion(ep["rotation"]).rotation_matrix)
        pc.translate(np.array(ep["translation"]))
        np.testing.assert_allclose(pc.points[:3].T, world[i], atol=2e-3)


def test_multisweep_and_lidarseg(written):
    root, nusc, scenes = written
    for s in nusc.scene:
        scene, _ = scenes[s["name"]]
        n = [len(sw.points) for sw in scene.sweeps]
        first = nusc.get("sample", s["first_sample_token"])
        second = nusc.get("sample", first["next"])
        pc, times = LidarPointCloud.from_file_multisweep(nusc, first, "LIDAR_TOP", "LIDAR_TOP", nsweeps=3)
        assert pc.nbr_points() == n[1] + n[0]  # only one sweep before the first keyframe
        pc, times = LidarPointCloud.from_file_multisweep(nusc, second, "LIDAR_TOP", "LIDAR_TOP", nsweeps=3)
        assert pc.nbr_points() == n[4] + n[3] + n[2]
        np.testing.assert_allclose(np.unique(times.round(6)), [0.0, 0.05, 0.1])
    by_sd = {r["sample_data_token"]: r for r in nusc.lidarseg}
    for sample in nusc.sample:
        sd_token = sample["data"]["LIDAR_TOP"]
        rec = by_sd[sd_token]
        labels = np.fromfile(Path(nusc.dataroot) / rec["filename"], dtype=np.uint8)
        points = LidarPointCloud.from_file(nusc.get_sample_data_path(sd_token))
        assert labels.shape == (points.nbr_points(),)
        scene, _ = scenes[nusc.get("scene", sample["scene_token"])["name"]]
        sweep = next(sw for sw in scene.sweeps if sw.timestamp_us == sample["timestamp"])
        np.testing.assert_array_equal(labels, sweep.lidarseg)


def test_num_lidar_pts_match_points_in_box(written):
    root, nusc, _ = written
    checked = 0
    for ann in nusc.sample_annotation:
        sample = nusc.get("sample", ann["sample_token"])
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        ep = nusc.get("ego_pose", sd["ego_pose_token"])
        box = nusc.get_box(ann["token"])
        box.translate(-np.array(ep["translation"]))
        box.rotate(Quaternion(ep["rotation"]).inverse)
        box.translate(-np.array(cs["translation"]))
        box.rotate(Quaternion(cs["rotation"]).inverse)
        pc = LidarPointCloud.from_file(nusc.get_sample_data_path(sd["token"]))
        assert int(points_in_box(box, pc.points[:3]).sum()) == ann["num_lidar_pts"]
        # the devkit's own path agrees
        _, boxes, _ = nusc.get_sample_data(sd["token"], selected_anntokens=[ann["token"]])
        np.testing.assert_allclose(boxes[0].center, box.center, atol=1e-9)
        checked += ann["num_lidar_pts"] > 0
    assert checked == 10


def test_annotation_fields(written):
    root, nusc, scenes = written
    ann = next(a for a in nusc.sample_annotation if a["category_name"] == "vehicle.car")
    assert ann["size"] == [2.0, 4.5, 1.6]  # width, length, height
    assert ann["visibility_token"] == "4" and ann["num_radar_pts"] == 0
    assert nusc.get("attribute", ann["attribute_tokens"][0])["name"] == "vehicle.moving"
    barrier = next(a for a in nusc.sample_annotation if a["category_name"] == "movable_object.barrier")
    assert barrier["attribute_tokens"] == [] and barrier["num_lidar_pts"] == 0
    sample = nusc.get("sample", ann["sample_token"])
    ep = nusc.get("ego_pose", sample_data_token := sample["data"]["LIDAR_TOP"])
    assert ep["timestamp"] == sample["timestamp"] == nusc.get("sample_data", sample_data_token)["timestamp"]
    # occupancy: OpenOccupancy layout, one file per keyframe
    for s in nusc.scene:
        occ = sorted((root / "nuScenes-Occupancy" / f"scene_{s['token']}" / "occupancy").glob("*.npy"))
        assert len(occ) == 3
        arr = np.load(occ[0])
        assert arr.dtype == np.int16 and arr.shape == (2, 4)
        assert {p.stem for p in occ} <= {sd["token"] for sd in nusc.sample_data if sd["is_key_frame"]}


def test_writing_is_deterministic(written, tmp_path):
    root, _, scenes = written
    again = tmp_path / "again"
    write_nuscenes([scenes[TRAIN_NAME][0], scenes[VAL_NAME][0]], again, VERSION)
    write_nuscenes([scenes[TRAIN_NAME][0], scenes[VAL_NAME][0]], again, VERSION)  # over itself
    files_a = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (root / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_ground_truth_submission(written, tmp_path):
    root, nusc, _ = written
    sub = ground_truth_submission(nusc)
    assert sub["meta"]["use_lidar"] is True
    assert set(sub["results"]) == {s["token"] for s in nusc.sample}
    boxes = [b for bs in sub["results"].values() for b in bs]
    assert len(boxes) == 10  # the point-less barriers are left out
    for b in boxes:
        assert set(b) == {"sample_token", "translation", "size", "rotation", "velocity", "detection_name",
                          "detection_score", "attribute_name"}
        assert len(b["velocity"]) == 2 and b["detection_name"] in DETECTION_NAMES
        assert b["detection_score"] == 1.0
    car = next(b for b in boxes if b["detection_name"] == "car")
    assert car["attribute_name"] == "vehicle.moving" and np.linalg.norm(car["velocity"]) > 5  # ~0.5 m / 50 ms
    json.loads(json.dumps(sub, allow_nan=False))
    EvalBoxes.deserialize(sub["results"], DetectionBox)
    val = ground_truth_submission(nusc, {VAL_NAME})
    val_scene = next(s for s in nusc.scene if s["name"] == VAL_NAME)
    assert {nusc.get("sample", t)["scene_token"] for t in val["results"]} == {val_scene["token"]}
    assert len(val["results"]) == 3


def test_official_detection_eval_scores_ground_truth_perfectly(written, tmp_path):
    from nuscenes.eval.detection.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    _, nusc, _ = written
    result = tmp_path / "results.json"
    result.write_text(json.dumps(ground_truth_submission(nusc, {VAL_NAME})))
    ev = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(result), "val", str(tmp_path / "eval"),
                       verbose=False)
    metrics = ev.evaluate()[0].serialize()
    for name in ("car", "pedestrian"):
        assert metrics["mean_dist_aps"][name] == pytest.approx(1.0)
        assert all(v == pytest.approx(0.0) for v in metrics["label_tp_errors"][name].values())
