"""`gpicture finetune --task T` and `gpicture evaluate --task T` end to end on tiny synthetic nuScenes
and Waymo splits for every task, and the Waymo detection predictions file format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from gpicture.data.convert import ConvertConfig, convert
from gpicture.data.spec import NUSCENES
from gpicture.data.store import VoxelStore
from gpicture.data.voxelize import VoxelGrid
from gpicture.eval.nuscenes_submission import (
    lidar_boxes_to_submission,
    write_submission,
)
from gpicture.eval.nuscenes_submission import (
    store_ground_truth as nuscenes_ground_truth,
)
from gpicture.eval.predictions import DetectionPrediction
from gpicture.eval.waymo_objects import read_objects, write_objects
from gpicture.eval.waymo_objects import store_ground_truth as waymo_ground_truth
from gpicture.synth.generate import SynthConfig, generate_nuscenes, generate_waymo
from stages.cli import app

REPO = Path(__file__).resolve().parent.parent
TINY = {"d_model": 32, "vfe_filters": [32, 32], "dim_feedforward": 48, "set_size": 24}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("detcli")
    generate_nuscenes(SynthConfig(scenes=3, frames=2, sweeps_before=1, seed=8, occupancy=True, workers=2),
                      root / "raw" / "nuscenes")
    generate_waymo(SynthConfig(scenes=2, frames=2, seed=3, workers=2), root / "raw" / "waymo")
    nus = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.4, 0.4, 0.4))
    way = VoxelGrid((-74.88, -74.88, -2.0, 74.88, 74.88, 4.0), (0.64, 0.64, 0.375))
    for split in ("mini_train", "mini_val"):
        convert(ConvertConfig("nuscenes", root / "raw" / "nuscenes", split, nus, sweeps=2),
                root / "nuscenes" / f"{split}.zarr")
    for split in ("training", "validation"):
        convert(ConvertConfig("waymo", root / "raw" / "waymo", split, way), root / "waymo" / f"{split}.zarr")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for d in ("nuscenes", "waymo"):
        params["model"]["profiles"]["small"][d].update(TINY)
    params["convert"]["nuscenes"]["root"] = str(root / "raw" / "nuscenes")
    params["finetune"]["detection"]["batch_size"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return {"root": root, "params": root / "params.yaml"}


def _run(args: list[str]) -> object:
    result = CliRunner().invoke(app, args)
    return result


@pytest.mark.parametrize("dataset,train,val", [("nuscenes", "mini_train", "mini_val"), ("waymo", "training", "validation")])
def test_finetune_then_evaluate_writes_the_official_format_and_metrics(world, dataset, train, val) -> None:
    root, params = world["root"], world["params"]
    out = root / "models" / dataset
    r = _run(["finetune", "--task", "detection", "--dataset", dataset, "--init", "scratch", "--epochs", "1",
              "--store", str(root / dataset / f"{train}.zarr"), "--out", str(out), "--params", str(params)])
    assert r.exit_code == 0, r.output
    assert (out / "model.pt").is_file() and (out / "checkpoint.pt").is_file()
    assert json.loads((out / "init_report.json").read_text())["init"] == "scratch"
    metrics_path, reports = root / "metrics" / f"{dataset}.json", root / "pred" / dataset
    r = _run(["evaluate", "--task", "detection", "--dataset", dataset, "--model", str(out / "model.pt"),
              "--store", str(root / dataset / f"{val}.zarr"), "--out", str(metrics_path), "--report-dir", str(reports),
              "--params", str(params)])
    assert r.exit_code == 0, r.output
    metrics = json.loads(metrics_path.read_text())
    if dataset == "nuscenes":
        sub = json.loads((reports / "results_nusc.json").read_text())
        assert set(sub["results"]) == set(VoxelStore.open(root / dataset / f"{val}.zarr").frame_ids)
        assert 0.0 <= metrics["mAP"] <= 1.0 and 0.0 <= metrics["NDS"] <= 1.0
        assert set(metrics["per_class_AP"]) >= {"car", "pedestrian"}
        assert (reports / "metrics_summary.json").is_file()
    else:
        assert (reports / "objects.bin").is_file()
        for k in ("mAP_L1", "mAPH_L1", "mAP_L2", "mAPH_L2"):
            assert metrics[k] is None or 0.0 <= metrics[k] <= 1.0
        assert "TYPE_VEHICLE" in metrics


@pytest.mark.parametrize("task", ["segmentation", "occupancy"])
@pytest.mark.parametrize("dataset,train,val", [("nuscenes", "mini_train", "mini_val"), ("waymo", "training", "validation")])
def test_dense_tasks_finetune_and_evaluate_from_the_cli(world, task, dataset, train, val) -> None:
    root, params = world["root"], world["params"]
    out = root / "models" / f"{task}-{dataset}"
    r = _run(["finetune", "--task", task, "--dataset", dataset, "--init", "scratch", "--epochs", "1",
              "--store", str(root / dataset / f"{train}.zarr"), "--out", str(out), "--params", str(params)])
    assert r.exit_code == 0, r.output
    assert (out / "model.pt").is_file() and (out / "init_report.json").is_file()
    metrics_path, reports = root / "metrics" / f"{task}-{dataset}.json", root / "pred" / f"{task}-{dataset}"
    r = _run(["evaluate", "--task", task, "--dataset", dataset, "--model", str(out / "model.pt"),
              "--store", str(root / dataset / f"{val}.zarr"), "--out", str(metrics_path), "--report-dir", str(reports),
              "--params", str(params)])
    assert r.exit_code == 0, r.output
    metrics = json.loads(metrics_path.read_text())
    assert 0.0 <= metrics["mIoU"] <= 1.0 and metrics["per_class_IoU"]
    assert len(metrics["provenance"]["git_commit"]) == 40 and "torch==" in metrics["provenance"]["packages"]
    if task == "occupancy":
        assert 0.0 <= metrics["IoU"] <= 1.0
        assert any(reports.glob("occupancy/*.npy"))
    else:
        assert any(reports.glob("predictions/**/*.bin"))
    # the written predictions score the same through --predictions
    pred = next(p for p in reports.iterdir() if p.is_dir())
    r = _run(["evaluate", "--task", task, "--dataset", dataset, "--predictions", str(pred),
              "--store", str(root / dataset / f"{val}.zarr"), "--out", str(metrics_path.with_suffix(".again.json")),
              "--report-dir", str(reports.with_name(reports.name + "-again")), "--params", str(params)])
    assert r.exit_code == 0, r.output
    assert json.loads(metrics_path.with_suffix(".again.json").read_text())["mIoU"] == pytest.approx(metrics["mIoU"])


def test_evaluate_scores_external_ground_truth_predictions_perfectly(world, tmp_path) -> None:
    root, params = world["root"], world["params"]
    nus_val = root / "nuscenes" / "mini_val.zarr"
    nus_store = VoxelStore.open(nus_val)
    write_submission(lidar_boxes_to_submission(nuscenes_ground_truth(nus_store, NUSCENES), nus_store.pose),
                     tmp_path / "gt.json")
    r = _run(["evaluate", "--task", "detection", "--dataset", "nuscenes", "--predictions", str(tmp_path / "gt.json"),
              "--store", str(nus_val), "--out", str(tmp_path / "nus.json"), "--report-dir", str(tmp_path / "nr"),
              "--params", str(params)])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "nus.json").read_text())["mAP"] == pytest.approx(1.0)

    way_val = root / "waymo" / "validation.zarr"
    gt = waymo_ground_truth(VoxelStore.open(way_val))
    frames = [DetectionPrediction(f, i, b.boxes, np.ones(len(b)), b.names, np.zeros((len(b), 2)))
              for i, (f, b) in enumerate(gt.items())]
    write_objects(frames, tmp_path / "gt.bin")
    r = _run(["evaluate", "--task", "detection", "--dataset", "waymo", "--predictions", str(tmp_path / "gt.bin"),
              "--store", str(way_val), "--out", str(tmp_path / "way.json"), "--report-dir", str(tmp_path / "wr"),
              "--params", str(params)])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "way.json").read_text())
    assert m["mAP_L1"] == pytest.approx(1.0) and m["mAPH_L2"] == pytest.approx(1.0)


def test_waymo_objects_round_trip_and_bad_files(world, tmp_path) -> None:
    rng = np.random.default_rng(0)
    boxes = np.column_stack([rng.normal(0, 10, (5, 3)), rng.uniform(1, 4, (5, 3)), rng.uniform(-3, 3, 5)])
    names = np.array(["TYPE_VEHICLE", "TYPE_PEDESTRIAN", "TYPE_CYCLIST", "TYPE_VEHICLE", "TYPE_VEHICLE"], dtype=object)
    fid = "seg_0001_000/1550401037050000"
    pred = DetectionPrediction(fid, 0, boxes, np.linspace(0.1, 0.9, 5), names, np.zeros((5, 2)))
    assert write_objects([pred], tmp_path / "o.bin") == 5
    back = read_objects(tmp_path / "o.bin", frame_ids=[fid, "other/1"])
    np.testing.assert_allclose(back[fid].boxes, boxes, rtol=1e-6)
    np.testing.assert_allclose(back[fid].scores, np.linspace(0.1, 0.9, 5), rtol=1e-6)
    assert list(back[fid].names) == list(names) and len(back["other/1"]) == 0
    with pytest.raises(ValueError, match="not in the ground truth"):
        read_objects(tmp_path / "o.bin", frame_ids=["other/1"])
    (tmp_path / "junk.bin").write_bytes(b"\xff\xfe not a proto \x00\x01")
    with pytest.raises(ValueError, match="junk.bin"):
        read_objects(tmp_path / "junk.bin")
    r = _run(["evaluate", "--task", "detection", "--dataset", "waymo", "--predictions", str(tmp_path / "o.bin"),
              "--store", str(world["root"] / "waymo" / "validation.zarr"), "--out", str(tmp_path / "m.json"),
              "--report-dir", str(tmp_path / "r"), "--params", str(world["params"])])
    assert r.exit_code == 2 and "other frames" in r.output and not (tmp_path / "m.json").exists()


def test_finetune_refuses_a_missing_pretrained_student(world, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = _run(["finetune", "--task", "detection", "--dataset", "nuscenes", "--params", str(world["params"])])
    assert r.exit_code == 2 and "student.pt" in r.output and "--init scratch" in r.output
    assert not (tmp_path / "models").exists()
