"""Real LiDAR through the pipeline: the nuScenes keyframes and Waymo records of ../shared/realdata.

nuScenes (11 real LIDAR_TOP keyframes laid out as v1.0-trainval, scene-0006 train, scene-0003
val): the stores ``gpicture convert`` writes agree exactly with what the devkit reads
(points, intensities, lidarseg labels, boxes with sizes, yaw and velocity in the LiDAR frame);
teacher, pre-training and the three fine-tunes run on the train scene and the official tools
score the val scene, a split the dataset holds only one scene of. Waymo (two real records whose
lasers hold no range images): one clear error, or with --skip-empty-frames an empty store that
every later stage refuses.

The data is read where it lies (never copied): ../shared/realdata beside the checkout, or the
folder $GPICTURE_REALDATA names; only where it is absent do these tests skip, saying so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from gpicture.data.batch import frame_features
from gpicture.data.store import VoxelStore
from stages.cli import app

REPO = Path(__file__).resolve().parent.parent
REAL = Path(os.environ.get("GPICTURE_REALDATA", REPO.parent / "shared" / "realdata"))  # never copied here
NUSCENES_REAL = REAL / "nuscenes_real"
WAYMO_FILES = sorted((REAL / "waymo_no_range_images").glob("*.tfrecord"))
VERSION = "v1.0-trainval"
TINY = {"d_model": 32, "vfe_filters": [32, 32], "dim_feedforward": 48, "set_size": 24}
NO_RETURNS = "no LiDAR returns in this frame: a stripped or camera-only file?"
EMPTY_STORE = "the store holds no frames"

pytestmark = pytest.mark.skipif(not NUSCENES_REAL.is_dir() or len(WAYMO_FILES) != 2,
                                reason=f"{REAL}: the real-data folder is absent (set GPICTURE_REALDATA)")


def _cli(args: list[str]):
    return CliRunner().invoke(app, [str(a) for a in args])


def _ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def nusc():
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version=VERSION, dataroot=str(NUSCENES_REAL), verbose=False)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """Both real splits converted (1 sweep, the default grid) and a params file of a tiny student."""
    root = tmp_path_factory.mktemp("realdata")
    logs = {}
    for split in ("train", "val"):
        logs[split] = _ok(_cli(["convert", "nuscenes", "--root", NUSCENES_REAL, "--version", VERSION,
                                "--split", split, "--sweeps", 1, "--out", root / f"{split}.zarr",
                                "--params", REPO / "params.yaml"]))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for d in ("nuscenes", "waymo"):
        params["model"]["profiles"]["small"][d].update(TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return {"root": root, "params": root / "params.yaml", "logs": logs}


# ---------------------------------------------------------------------------------------
# nuScenes: the stores equal the devkit's reads
# ---------------------------------------------------------------------------------------


def _lidar_from_global_rotation(nusc, sd_token: str) -> np.ndarray:
    from pyquaternion import Quaternion

    sd = nusc.get("sample_data", sd_token)
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    return Quaternion(cs["rotation"]).inverse.rotation_matrix @ Quaternion(pose["rotation"]).inverse.rotation_matrix


@pytest.mark.parametrize("split, scene, n", [("train", "scene-0006", 8), ("val", "scene-0003", 3)])
def test_stores_equal_the_devkit_reads(work, nusc, split, scene, n) -> None:
    from nuscenes.utils.data_classes import LidarPointCloud

    store = VoxelStore.open(work["root"] / f"{split}.zarr")
    assert len(store) == n and set(store.frame_scenes) == {scene}
    assert store.attrs["version"] == VERSION and store.attrs["split"] == split
    n_boxes = 0
    for i in range(len(store)):
        fr = store[i]
        sample = nusc.get("sample", fr.frame_id)
        sd_token = sample["data"]["LIDAR_TOP"]
        # Points and intensity: from_file_multisweep (its remove_close included), exactly.
        pc, _ = LidarPointCloud.from_file_multisweep(nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=1)
        assert 25_000 < len(fr.points) == pc.nbr_points()
        np.testing.assert_array_equal(fr.points, pc.points[:3].T)  # bit for bit
        np.testing.assert_array_equal(fr.features["intensity"], pc.points[3])
        assert fr.features["intensity"].max() > 100  # the real 0..255 range, kept as it is
        np.testing.assert_array_equal(frame_features(fr, ["intensity", "time_lag"])[:, 0], pc.points[3])  # model input
        # lidarseg labels: the raw file's, for the points remove_close keeps.
        raw = np.fromfile(NUSCENES_REAL / nusc.get("sample_data", sd_token)["filename"], np.float32).reshape(-1, 5)
        keep = ~((np.abs(raw[:, 0]) < 1.0) & (np.abs(raw[:, 1]) < 1.0))
        labels = np.fromfile(NUSCENES_REAL / nusc.get("lidarseg", sd_token)["filename"], dtype=np.uint8)
        np.testing.assert_array_equal(fr.seg_labels, labels[keep])
        # Boxes: get_sample_data's, in the LiDAR frame; velocities box_velocity rotated into it.
        _, boxes, _ = nusc.get_sample_data(sd_token)
        assert len(fr.boxes) == len(boxes) > 0
        ref = np.array([[*b.center, b.wlh[1], b.wlh[0], b.wlh[2]] for b in boxes])
        np.testing.assert_array_equal(fr.boxes[:, :6], ref.astype(np.float32))  # the devkit's, stored as float32
        yaw = np.array([b.orientation.yaw_pitch_roll[0] for b in boxes])  # ours from quaternions: float32 rounding
        np.testing.assert_allclose((fr.boxes[:, 6] - yaw + np.pi) % (2 * np.pi) - np.pi, 0, atol=1e-6)
        assert list(fr.box_names) == [b.name for b in boxes]
        rot = _lidar_from_global_rotation(nusc, sd_token)
        vel = np.array([rot @ nusc.box_velocity(b.token) for b in boxes])[:, :2]
        np.testing.assert_array_equal(fr.box_velocity, vel.astype(np.float32))  # NaN where the devkit's is NaN
        n_boxes += len(boxes)
    assert n_boxes == {"train": 487, "val": 160}[split]  # 647 boxes in all (the README)


def test_multisweep_on_a_dataset_without_sweeps(work, nusc) -> None:
    """--sweeps 10 walks `prev` back through the earlier keyframes, as from_file_multisweep does,
    and says how many sweeps each frame got."""
    from nuscenes.utils.data_classes import LidarPointCloud

    out = work["root"] / "train-10.zarr"
    log = _ok(_cli(["convert", "nuscenes", "--root", NUSCENES_REAL, "--version", VERSION, "--split", "train",
                    "--sweeps", 10, "--out", out, "--params", REPO / "params.yaml"]))
    assert "no sweeps between keyframes" in log and "8 sweeps: 1 frame" in " ".join(log.split())
    store = VoxelStore.open(out)
    assert store.attrs["sweeps_read"] == {"min": 1, "max": 8, "mean": 4.5}
    assert store.attrs["sweeps_between_keyframes"] is False
    for i in (0, 7):
        fr = store[i]
        pc, times = LidarPointCloud.from_file_multisweep(nusc, nusc.get("sample", fr.frame_id), "LIDAR_TOP",
                                                         "LIDAR_TOP", nsweeps=10)
        np.testing.assert_array_equal(fr.points, pc.points[:3].T)  # bit for bit, the earlier keyframes moved too
        np.testing.assert_array_equal(fr.features["intensity"], pc.points[3])
        np.testing.assert_allclose(fr.features["time_lag"], times[0], atol=1e-6)
    assert VoxelStore.open(work["root"] / "train.zarr").attrs["sweeps_read"]["max"] == 1


# ---------------------------------------------------------------------------------------
# nuScenes: the pipeline on the real scenes, scored by the official tools
# ---------------------------------------------------------------------------------------


def _evaluate(work: dict, task: str, name: str, *extra) -> dict:
    root = work["root"]
    out = root / "metrics" / f"{name}.json"
    log = _ok(_cli(["evaluate", "--task", task, "--dataset", "nuscenes", "--store", root / "val.zarr",
                    "--out", out, "--report-dir", out.with_suffix(""), "--raw-root", NUSCENES_REAL,
                    "--params", work["params"], *extra]))
    metrics = json.loads(out.read_text())
    metrics["log"] = log
    return metrics


def test_segmentation_from_scratch_beats_the_majority_class(work) -> None:
    root = work["root"]
    _ok(_cli(["finetune", "--task", "segmentation", "--dataset", "nuscenes", "--init", "scratch",
              "--store", root / "train.zarr", "--out", root / "seg", "--epochs", 8, "--params", work["params"]]))
    model = _evaluate(work, "segmentation", "segmentation", "--model", root / "seg" / "model.pt")
    base = _evaluate(work, "segmentation", "majority", "--baseline", "majority", "--train-store", root / "train.zarr")
    assert "baseline: terrain" in base["log"]
    for m in (model, base):  # the devkit's LidarSegEval on the one val scene the dataset holds
        assert m["scenes"] == ["scene-0003"] and m["scenes_missing"] == 149 and m["frames"] == 3
        assert "scene-0003" in m["log"] and len(m["per_class_IoU"]) == 16
        assert m["mIoU"] == pytest.approx(m["mIoU_store"], abs=1e-6)
    assert 0.0 < base["mIoU"] < 0.05
    assert model["mIoU"] > 1.5 * base["mIoU"], (model, base)


def test_teacher_pretrain_finetunes_and_official_evaluation(work) -> None:
    root, params = work["root"], work["params"]
    for split in ("train", "val"):
        _ok(_cli(["teacher", "--store", root / f"{split}.zarr", "--out", root / f"teacher-{split}.zarr",
                  "--device", "cpu", "--init", "random", "--params", params]))
    _ok(_cli(["pretrain", "--dataset", "nuscenes", "--store", root / "train.zarr", "--teacher",
              root / "teacher-train.zarr", "--out", root / "pretrain", "--epochs", 1, "--params", params]))
    student = root / "pretrain" / "student.pt"
    for task in ("detection", "occupancy"):
        args = ["finetune", "--task", task, "--dataset", "nuscenes", "--init", student,
                "--store", root / "train.zarr", "--out", root / task, "--epochs", 1, "--procs", 1,
                "--params", params]  # one process: the occupancy warning below is raised in this one
        if task == "occupancy":  # no nuScenes-Occupancy folder: the truth comes from the labelled points
            with pytest.warns(UserWarning, match="occupancy ground truth is built from its segmentation labels"):
                _ok(_cli(args))
        else:
            _ok(_cli(args))
    det = _evaluate(work, "detection", "detection", "--model", root / "detection" / "model.pt")
    assert det["scenes"] == ["scene-0003"] and det["scenes_missing"] == 149
    assert 0.0 <= det["mAP"] <= 1.0 and 0.0 <= det["NDS"] <= 1.0
    assert (root / "metrics" / "detection" / "metrics_summary.json").is_file()  # the devkit's own summary
    occ = _evaluate(work, "occupancy", "occupancy", "--model", root / "occupancy" / "model.pt")
    assert occ["frames"] == 3 and occ["truth"] == "segmentation labels" and len(occ["per_class_IoU"]) == 16
    assert 0.0 <= occ["mIoU"] <= 1.0


# ---------------------------------------------------------------------------------------
# The synthetic world's intensities against the real ones
# ---------------------------------------------------------------------------------------


def test_synthetic_intensity_matches_the_real_keyframes(nusc, tmp_path) -> None:
    """Per lidarseg class with many real points, the synthetic median intensity is within 30 %
    of the real one and the spread (p90 / median) within a factor 1.6: same range, same shape."""
    from nuscenes.nuscenes import NuScenes

    from gpicture.synth.generate import SynthConfig, generate_nuscenes
    from gpicture.synth.realism import intensity_by_class

    out = tmp_path / "nuscenes"
    generate_nuscenes(SynthConfig(scenes=1, frames=2, seed=0, sweeps_before=0, workers=1, occupancy=False), out)
    _, synthetic = intensity_by_class(NuScenes(version="v1.0-mini", dataroot=str(out), verbose=False))
    _, real = intensity_by_class(nusc)
    checked = 0
    for name in ("flat.driveable_surface", "flat.terrain", "static.manmade", "static.vegetation",
                 "movable_object.barrier", "human.pedestrian.adult"):
        r, s = real[name], synthetic.get(name)
        if s is None or s.points < 500:
            continue
        checked += 1
        assert abs(s.median - r.median) <= 0.3 * r.median + 1, (name, s.median, r.median)
        ratio = (s.percentiles[90] / s.median) / (r.percentiles[90] / r.median)  # synthetic / real spread
        assert ratio > 1 / 1.6, (name, ratio)
        assert ratio < 1.6, (name, ratio)
    assert checked >= 3
    assert max(st.percentiles[99] for st in synthetic.values()) <= 255


# ---------------------------------------------------------------------------------------
# Waymo: real records whose lasers hold no range images
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", WAYMO_FILES, ids=lambda p: p.name)
def test_waymo_file_without_returns_is_one_clear_error(path, tmp_path) -> None:
    out = tmp_path / "val.zarr"
    result = _cli(["convert", "waymo", "--root", path, "--split", "val", "--out", out,
                   "--params", REPO / "params.yaml"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert str(path) in text and "record 0 (frame " in text and NO_RETURNS in text
    assert "Traceback" not in result.output and list(tmp_path.iterdir()) == []  # nothing half-written


def test_skipped_frames_leave_an_empty_store_that_every_stage_refuses(tmp_path) -> None:
    store = tmp_path / "val.zarr"
    log = _ok(_cli(["convert", "waymo", "--root", WAYMO_FILES[1], "--split", "val", "--out", store,
                    "--skip-empty-frames", "--params", REPO / "params.yaml"]))
    assert "skipped 1 of 1 frames" in " ".join(log.split())
    attrs = json.loads((store / "zarr.json").read_text())["attributes"]
    assert attrs["n_frames"] == 0 and attrs["skipped_frames"] == 1 and attrs["complete"] is True
    params = REPO / "params.yaml"
    stages = {
        "teacher": ["teacher", "--store", store, "--out", tmp_path / "teacher.zarr", "--init", "random",
                    "--params", params],
        "pretrain": ["pretrain", "--dataset", "waymo", "--store", store, "--teacher", tmp_path / "teacher.zarr",
                     "--out", tmp_path / "pretrain", "--params", params],
        "show": ["show", store, "--frame", 0, "--out", tmp_path / "show.png", "--params", params],
        "cka": ["cka", "--pretrained", tmp_path / "student.pt", "--finetuned", tmp_path / "model.pt",
                "--store", store, "--out", tmp_path / "alpha.yaml"],
    }
    for task in ("detection", "segmentation", "occupancy"):
        stages[f"finetune {task}"] = ["finetune", "--task", task, "--dataset", "waymo", "--init", "scratch",
                                      "--store", store, "--out", tmp_path / task, "--params", params]
        stages[f"evaluate {task}"] = ["evaluate", "--task", task, "--dataset", "waymo", "--store", store,
                                      "--model", tmp_path / "model.pt", "--out", tmp_path / f"{task}.json",
                                      "--report-dir", tmp_path / f"{task}-pred", "--params", params]
    for name, args in stages.items():
        result = _cli(args)
        text = " ".join(result.output.split())
        assert result.exit_code != 0 and str(store) in text and EMPTY_STORE in text, (name, result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val.zarr"]  # no stage wrote anything
