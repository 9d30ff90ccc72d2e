"""`gpicture.data.nuscenes_reader` against the nuScenes devkit on generated data."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import transform_matrix
from nuscenes.utils.splits import create_splits_scenes
from pyquaternion import Quaternion

from gpicture.data.nuscenes_reader import TABLES, occupancy_path, open_nuscenes, read_sample, split_sample_tokens
from gpicture.synth.generate import SynthConfig, generate_nuscenes

VERSION = "v1.0-mini"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "nuscenes"
    generate_nuscenes(SynthConfig(scenes=3, frames=3, seed=5, sweeps_before=3, workers=2), out)
    return out


@pytest.fixture(scope="module")
def nusc(root) -> NuScenes:
    return open_nuscenes(root, VERSION)


def _link_copy(root: Path, dst: Path) -> Path:
    """A copy of the dataset whose files are symlinks to the originals (replace one to alter it)."""
    shutil.copytree(root, dst, copy_function=os.symlink)
    return dst


def _replace(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def _raw(nusc: NuScenes, sd_token: str) -> np.ndarray:
    return np.fromfile(Path(nusc.dataroot) / nusc.get("sample_data", sd_token)["filename"], np.float32).reshape(-1, 5)


def _not_close(xyz: np.ndarray) -> np.ndarray:
    return ~((np.abs(xyz[:, 0]) < 1.0) & (np.abs(xyz[:, 1]) < 1.0))


# ---------------------------------------------------------------------------------------
# Points, labels
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sweeps", [1, 10])
def test_points_equal_from_file_multisweep(nusc, sweeps) -> None:
    for sample in nusc.sample:  # the first keyframe of each scene has only 3 sweeps before it
        frame = read_sample(nusc, sample["token"], sweeps)
        pc, times = LidarPointCloud.from_file_multisweep(nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=sweeps)
        assert frame.points.dtype == np.float32 and frame.points.shape == (pc.nbr_points(), 3)
        np.testing.assert_allclose(frame.points, pc.points[:3].T, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(frame.features["intensity"], pc.points[3])
        np.testing.assert_allclose(frame.features["time_lag"], times[0], rtol=0, atol=1e-6)
        assert all(f.dtype == np.float32 for f in frame.features.values())
        assert frame.extra["dropped_nonfinite"] == 0
    assert frame.features["time_lag"].max() == pytest.approx(0.05 * (sweeps - 1), abs=0.01)  # 20 Hz sweeps


def test_ring_and_keyframe_points_are_the_files_rows(nusc) -> None:
    sample = nusc.sample[4]
    frame = read_sample(nusc, sample["token"], 10)
    raw = _raw(nusc, sample["data"]["LIDAR_TOP"])
    raw = raw[_not_close(raw)]
    n = len(raw)
    np.testing.assert_array_equal(frame.features["ring"][:n], raw[:, 4])
    np.testing.assert_allclose(frame.points[:n], raw[:, :3], atol=1e-5)  # keyframe: identity transform
    assert (frame.features["time_lag"][:n] == 0).all() and (frame.features["time_lag"][n:] > 0).all()


def test_lidarseg_labels_follow_the_kept_keyframe_points(nusc) -> None:
    for sample in nusc.sample:
        sd = sample["data"]["LIDAR_TOP"]
        frame = read_sample(nusc, sample["token"], 10)
        labels = np.fromfile(Path(nusc.dataroot) / nusc.get("lidarseg", sd)["filename"], dtype=np.uint8)
        kept = labels[_not_close(_raw(nusc, sd)[:, :3])]
        assert frame.seg_labels.dtype == np.uint8 and len(frame.seg_labels) == len(frame.points)
        np.testing.assert_array_equal(frame.seg_labels[: len(kept)], kept)
        assert (frame.seg_labels[len(kept):] == 255).all()


# ---------------------------------------------------------------------------------------
# Boxes, pose, occupancy
# ---------------------------------------------------------------------------------------


def test_boxes_equal_get_sample_data(nusc) -> None:
    for sample in nusc.sample:
        frame = read_sample(nusc, sample["token"], 1)
        _, boxes, _ = nusc.get_sample_data(sample["data"]["LIDAR_TOP"])
        assert len(boxes) == len(frame.boxes) > 20
        ref = np.array([[*b.center, b.wlh[1], b.wlh[0], b.wlh[2], b.orientation.yaw_pitch_roll[0]] for b in boxes])
        assert frame.boxes.dtype == np.float32
        np.testing.assert_allclose(frame.boxes[:, :6], ref[:, :6], rtol=0, atol=1e-4)
        dyaw = (frame.boxes[:, 6] - ref[:, 6] + np.pi) % (2 * np.pi) - np.pi
        np.testing.assert_allclose(dyaw, 0, atol=1e-5)
        anns = [nusc.get("sample_annotation", b.token) for b in boxes]
        assert list(frame.box_names) == [b.name for b in boxes]
        assert list(frame.box_ids) == [a["instance_token"] for a in anns]
        np.testing.assert_array_equal(frame.box_num_points, [a["num_lidar_pts"] for a in anns])
        assert frame.box_num_points.dtype == np.int32 and (frame.box_difficulty == 0).all()


def test_velocities_are_box_velocity_in_the_sensor_frame(nusc) -> None:
    n_moving = 0
    for sample in nusc.sample:
        frame = read_sample(nusc, sample["token"], 1)
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        rot = Quaternion(cs["rotation"]).inverse.rotation_matrix @ Quaternion(pose["rotation"]).inverse.rotation_matrix
        ref = np.array([rot @ nusc.box_velocity(t) for t in sample["anns"]])[:, :2]
        assert frame.box_velocity.dtype == np.float32
        np.testing.assert_array_equal(np.isnan(frame.box_velocity), np.isnan(ref))
        np.testing.assert_allclose(frame.box_velocity, ref, rtol=0, atol=1e-4)
        n_moving += int((np.linalg.norm(np.nan_to_num(ref), axis=1) > 1).sum())
    assert n_moving > 5  # a rotation that matters is checked


def test_pose_timestamp_scene_and_occupancy(nusc) -> None:
    sample = nusc.sample[5]
    frame = read_sample(nusc, sample["token"], 1)
    sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    expect = (transform_matrix(pose["translation"], Quaternion(pose["rotation"]))
              @ transform_matrix(cs["translation"], Quaternion(cs["rotation"])))
    np.testing.assert_allclose(frame.pose, expect, atol=1e-9)
    ann = nusc.get("sample_annotation", sample["anns"][0])
    np.testing.assert_allclose((frame.pose @ [*frame.boxes[0, :3], 1.0])[:3], ann["translation"], atol=1e-3)
    assert frame.frame_id == sample["token"] and frame.timestamp_us == sample["timestamp"]
    assert frame.scene == nusc.get("scene", sample["scene_token"])["name"]
    occ = np.load(occupancy_path(nusc, sample))
    assert frame.occupancy.dtype == np.int16
    np.testing.assert_array_equal(frame.occupancy, occ)


# ---------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------


def test_split_tokens_follow_the_official_splits(nusc) -> None:
    splits = create_splits_scenes()
    train = split_sample_tokens(nusc, "mini_train")
    val = split_sample_tokens(nusc, "mini_val")
    assert len(train) == 3 and len(val) == 6 and set(train) | set(val) == {s["token"] for s in nusc.sample}
    for name, tokens in (("mini_train", train), ("mini_val", val)):
        samples = [nusc.get("sample", t) for t in tokens]
        names = [nusc.get("scene", s["scene_token"])["name"] for s in samples]
        assert set(names) <= set(splits[name])
        assert names == sorted(names, key=splits[name].index)  # scene order
        for a, b in zip(samples, samples[1:]):  # then time order
            assert a["scene_token"] != b["scene_token"] or a["timestamp"] < b["timestamp"]
        assert all(s["token"] in tokens for s in nusc.sample
                   if nusc.get("scene", s["scene_token"])["name"] in splits[name])


def test_split_validation(nusc) -> None:
    with pytest.raises(ValueError, match="mini_val"):
        split_sample_tokens(nusc, "minival")
    with pytest.raises(ValueError, match="trainval"):
        split_sample_tokens(nusc, "train")
    with pytest.raises(ValueError, match="test"):
        split_sample_tokens(nusc, "test")


# ---------------------------------------------------------------------------------------
# Broken data
# ---------------------------------------------------------------------------------------


def test_missing_table_and_folders(root, tmp_path) -> None:
    assert len(TABLES) == 13
    copy = _link_copy(root, tmp_path / "copy")
    (copy / VERSION / "sample.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"sample\.json: missing nuScenes table"):
        open_nuscenes(copy, VERSION)
    with pytest.raises(FileNotFoundError, match="v1.0-trainval: missing nuScenes version folder"):
        open_nuscenes(root, "v1.0-trainval")
    with pytest.raises(FileNotFoundError, match="missing nuScenes root folder"):
        open_nuscenes(tmp_path / "nowhere", VERSION)


def _keyframe_file(nusc: NuScenes, sample: dict) -> str:
    return nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["filename"]


def _sweep_file(nusc: NuScenes, sample: dict) -> str:
    sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    return nusc.get("sample_data", sd["prev"])["filename"]


@pytest.mark.parametrize("which", [_keyframe_file, _sweep_file])
def test_truncated_pcd_bin_is_named(root, nusc, tmp_path, which) -> None:
    sample = nusc.sample[4]
    rel = which(nusc, sample)
    copy = _link_copy(root, tmp_path / "copy")
    _replace(copy / rel, (root / rel).read_bytes()[:-6])
    broken = NuScenes(version=VERSION, dataroot=str(copy), verbose=False)
    message = rf"{re.escape(Path(rel).name)}: \d+ bytes is not a whole number of 5-float32 points"
    with pytest.raises(ValueError, match=message):
        read_sample(broken, sample["token"], 10)


def test_empty_keyframe_and_missing_file_are_named(root, nusc, tmp_path) -> None:
    sample = nusc.sample[4]
    rel = _keyframe_file(nusc, sample)
    copy = _link_copy(root, tmp_path / "copy")
    _replace(copy / rel, b"")
    broken = NuScenes(version=VERSION, dataroot=str(copy), verbose=False)
    with pytest.raises(ValueError, match=rf"{re.escape(Path(rel).name)}: empty keyframe"):
        read_sample(broken, sample["token"], 1)
    (copy / rel).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(Path(rel).name)):
        read_sample(broken, sample["token"], 1)
    with pytest.raises(ValueError, match="sweeps"):
        read_sample(nusc, sample["token"], 0)


def test_nonfinite_points_are_dropped_and_counted(root, nusc, tmp_path) -> None:
    sample = nusc.sample[4]
    good = read_sample(nusc, sample["token"], 10)
    key_rel, sweep_rel = _keyframe_file(nusc, sample), _sweep_file(nusc, sample)
    copy = _link_copy(root, tmp_path / "copy")
    key = np.fromfile(root / key_rel, np.float32).reshape(-1, 5)
    sweep = np.fromfile(root / sweep_rel, np.float32).reshape(-1, 5)
    kept_key = np.flatnonzero(_not_close(key))
    i = int(kept_key[100])  # a keyframe point that survives remove_close
    j = int(np.flatnonzero(_not_close(sweep))[7])
    key[i, 0] = np.nan
    sweep[j, 2] = np.inf
    _replace(copy / key_rel, key.tobytes())
    _replace(copy / sweep_rel, sweep.tobytes())
    frame = read_sample(NuScenes(version=VERSION, dataroot=str(copy), verbose=False), sample["token"], 10)
    assert frame.extra["dropped_nonfinite"] == 2
    assert np.isfinite(frame.points).all()
    # Exactly those two points are gone; the keyframe labels stay aligned.
    n_key = len(kept_key)
    drop = np.ones(len(good.points), bool)
    drop[100] = False
    drop[n_key + int(np.flatnonzero(_not_close(sweep)).searchsorted(j))] = False
    np.testing.assert_array_equal(frame.points, good.points[drop])
    np.testing.assert_array_equal(frame.seg_labels, good.seg_labels[drop])
    np.testing.assert_array_equal(frame.features["time_lag"], good.features["time_lag"][drop])


def test_no_lidarseg_no_occupancy_gives_none(root, nusc, tmp_path) -> None:
    copy = _link_copy(root, tmp_path / "copy")
    (copy / VERSION / "lidarseg.json").unlink()
    shutil.rmtree(copy / "nuScenes-Occupancy")
    plain = open_nuscenes(copy, VERSION)
    sample = plain.sample[2]
    frame = read_sample(plain, sample["token"], 3)
    assert frame.seg_labels is None and frame.occupancy is None
    np.testing.assert_array_equal(frame.points, read_sample(nusc, sample["token"], 3).points)
