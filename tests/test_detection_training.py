"""Detection fine-tuning pieces end to end on a tiny synthetic split (issue 8, in progress)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from gpicture.data.convert import ConvertConfig, convert
from gpicture.data.voxelize import VoxelGrid
from gpicture.models.detection.model import Detector
from gpicture.models.student import Student, StudentConfig
from gpicture.synth.generate import SynthConfig, generate_nuscenes
from gpicture.training.augment import AugmentConfig
from gpicture.training.detection_data import DetectionDataset, collate_detection, detection_classes
from gpicture.training.pretrain import save_student

REPO = Path(__file__).resolve().parent.parent
PROFILE = {**yaml.safe_load((REPO / "params.yaml").read_text())["model"]["profiles"]["small"]["nuscenes"],
           "d_model": 32, "vfe_filters": [32, 32], "dim_feedforward": 48, "set_size": 24}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("det")
    generate_nuscenes(SynthConfig(scenes=3, frames=2, sweeps_before=1, seed=6, occupancy=False, workers=2), root / "raw")
    grid = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.4, 0.4, 0.4))
    convert(ConvertConfig("nuscenes", root / "raw", "mini_val", grid, sweeps=2), root / "s.zarr")
    return root / "s.zarr"


def test_detector_trains_and_loads_a_pretrained_student(store, tmp_path) -> None:
    tasks, cmap = detection_classes("nuscenes")
    names = [n for t in tasks for n in t]
    ds = DetectionDataset(store, PROFILE["point_features"], names, cmap, augment_cfg=AugmentConfig())
    batch = collate_detection([ds[0], ds[1]])
    assert len(batch.boxes) == 2 and all(len(b) > 5 for b in batch.boxes)
    assert set(torch.cat(batch.labels).tolist()) <= set(range(10))
    torch.manual_seed(0)
    student = Student(StudentConfig.from_params(PROFILE, ds.attrs))
    save_student(student, PROFILE, ds.attrs, tmp_path / "student.pt")
    torch.manual_seed(1)
    det = Detector(Student(StudentConfig.from_params(PROFILE, ds.attrs)), tasks)
    report = det.load_pretrained(tmp_path / "student.pt")
    assert report["missing"] == [] and len(report["loaded"]) == len(student.state_dict())
    torch.testing.assert_close(det.student.state_dict()["vfe.layers.0.linear.weight"],
                               student.state_dict()["vfe.layers.0.linear.weight"])
    opt = torch.optim.Adam(det.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        loss, _ = det.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    det.eval()
    out = det.detect(batch, score_threshold=0.0)
    assert len(out) == 2 and out[0].boxes.shape[1] == 7


def test_finetune_run_and_nuscenes_scoring(store, tmp_path) -> None:
    from gpicture.eval.nuscenes_detection import evaluate_submission, lidar_boxes_to_submission, write_submission
    from gpicture.training.engine import DistInfo, TrainConfig
    from gpicture.training.finetune_common import label_subset
    from gpicture.training.finetune_detection import load_detector, predict, run_detection_finetune

    assert label_subset(8, 0.5, 0) == sorted(label_subset(8, 0.5, 0)) and len(label_subset(8, 0.5, 0)) == 4
    with pytest.raises(ValueError, match="label-fraction"):
        label_subset(8, 0.0, 0)
    cfg = TrainConfig(epochs=1, batch_size=2, lr=2e-3, weight_decay=0.01)
    run_detection_finetune("nuscenes", PROFILE, store, tmp_path / "ft", cfg, DistInfo(), label_fraction=0.5, progress=False)
    assert (tmp_path / "ft" / "model.pt").exists() and (tmp_path / "ft" / "init_report.json").exists()
    from gpicture.data.store import VoxelStore

    det = load_detector(tmp_path / "ft" / "model.pt", VoxelStore.open(store).attrs)
    preds = predict(det, store, score_threshold=0.05)
    assert len(preds) == len(VoxelStore.open(store))
    sub = lidar_boxes_to_submission(preds)
    write_submission(sub, tmp_path / "sub.json")
    root = Path(VoxelStore.open(store).attrs["source_root"])
    metrics = evaluate_submission(root, "v1.0-mini", "mini_val", tmp_path / "sub.json", tmp_path / "eval")
    assert 0.0 <= metrics["mAP"] <= 1.0 and set(metrics["per_class_AP"]) >= {"car", "pedestrian"}
