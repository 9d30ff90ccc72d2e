"""Detection fine-tuning pieces end to end on a tiny synthetic split (issue 8, in progress)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from gpicture.data.convert import ConvertConfig, convert
from gpicture.data.spec import NUSCENES, WAYMO
from gpicture.data.store import VoxelStore
from gpicture.data.voxelize import VoxelGrid
from gpicture.eval.detection import predictions_file, score_detections, write_detections
from gpicture.eval.nuscenes_detection import evaluate_submission
from gpicture.eval.nuscenes_submission import (
    lidar_boxes_to_submission,
    write_submission,
)
from gpicture.eval.predictions import DetectionPrediction, RawSource
from gpicture.models.detection.model import DetectionBatch, Detector
from gpicture.models.student import Student, StudentConfig
from gpicture.synth.generate import SynthConfig, generate_nuscenes
from gpicture.tasks.detection.data import (
    DetectionDataset,
    DetectionItem,
    collate_detection,
)
from gpicture.tasks.detection.task import (
    DetectionHead,
    DetectionConfig,
    DetectionTask,
)
from gpicture.training.augment import AugmentConfig
from gpicture.training.engine import DistInfo, TrainConfig
from gpicture.training.finetune import (
    FinetuneRun,
    finetune,
    label_subset,
    load_model,
    load_pretrained_student,
    predict,
)
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


def _top_precision(det: Detector, batch: DetectionBatch, k: int = 20, radius: float = 1.0) -> float:
    """Of each frame's ``k`` best-scoring detections, the fraction whose centre lies within
    ``radius`` m (BEV) of a ground-truth box of its class; the mean over the batch's frames."""
    det.eval()
    out = det.detect(batch.voxels, score_threshold=0.0)
    hits = []
    for d, gt, gl in zip(out, batch.boxes, batch.labels, strict=True):
        top = d.scores.argsort(descending=True)[:k]
        near = torch.cdist(d.boxes[top, :2].double(), gt[:, :2].double()) < radius
        hits.append(float((near & (d.labels[top][:, None] == gl[None])).any(1).float().mean()))
    return sum(hits) / len(hits)


def test_detector_trains_and_loads_a_pretrained_student(store, tmp_path) -> None:
    tasks, cmap = [list(g) for g in NUSCENES.detection_groups], NUSCENES.detection_class_map()
    names = [n for t in tasks for n in t]
    assert names == NUSCENES.detection_classes and len(names) == 10
    ds = DetectionDataset(store, PROFILE["point_features"], names, cmap, augment_cfg=AugmentConfig())
    item = ds[0]
    assert isinstance(item, DetectionItem) and item.voxels.index == 0
    assert len(item.boxes) == len(item.labels) == len(item.velocity) and item.boxes.shape[1] == 7
    assert len(item.voxels.points) == len(item.voxels.features) == len(item.voxels.point_voxel)
    batch = collate_detection([ds[0], ds[1]])
    assert len(batch.boxes) == 2 and all(len(b) > 5 for b in batch.boxes)
    assert set(torch.cat(batch.labels).tolist()) <= set(range(10))
    assert batch.batch_size == 2 and batch.voxels.frame_index.tolist() == [0, 1]
    torch.manual_seed(0)
    student = Student(StudentConfig.from_params(PROFILE, ds.attrs))
    save_student(student, PROFILE, ds.attrs, tmp_path / "student.pt")
    torch.manual_seed(1)
    det = Detector(Student(StudentConfig.from_params(PROFILE, ds.attrs)), tasks)
    report = load_pretrained_student(det.student, tmp_path / "student.pt")
    assert report["missing"] == [] and len(report["loaded"]) == len(student.state_dict())
    torch.testing.assert_close(det.student.state_dict()["vfe.layers.0.linear.weight"],
                               student.state_dict()["vfe.layers.0.linear.weight"])
    torch.save({"format": "something-else"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt: not a gpicture pre-trained student"):
        load_pretrained_student(det.student, tmp_path / "bad.pt")
    loss, logs = det.loss(batch)
    assert torch.isfinite(loss) and set(logs) == {f"task{t}_{k}" for t in range(len(tasks)) for k in ("heatmap", "regression")}
    det.eval()
    out = det.detect(batch.voxels, score_threshold=0.0)
    assert len(out) == 2 and out[0].boxes.shape[1] == 7 and len(out[0].scores) == len(out[0].labels)


def test_training_fits_the_heatmap_and_finds_the_boxes(store) -> None:
    """A short fit on two unaugmented frames: the heatmap loss falls several-fold and the most
    confident detections sit on ground-truth boxes of their class, which an untrained
    detector's do not (measured: heatmap loss 112 -> ~11, top-20 precision within 1 m ~0.33
    after 80 steps; untrained ~0)."""
    tasks = [list(g) for g in NUSCENES.detection_groups]
    ds = DetectionDataset(store, PROFILE["point_features"], NUSCENES.detection_classes, NUSCENES.detection_class_map())
    batch = collate_detection([ds[0], ds[1]])
    torch.manual_seed(1)
    det = Detector(Student(StudentConfig.from_params(PROFILE, ds.attrs)), tasks, stride=2)
    before = _top_precision(det, batch)
    opt = torch.optim.Adam(det.parameters(), lr=1e-2)
    heat = []
    for _ in range(80):
        det.train()
        loss, logs = det.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        heat.append(sum(v for k, v in logs.items() if k.endswith("_heatmap")))
    assert min(heat[-5:]) < heat[0] / 4, heat
    after = _top_precision(det, batch)
    assert after >= 0.15 and after > before + 0.1, (before, after)


def test_finetune_run_and_nuscenes_scoring(store, tmp_path) -> None:
    assert label_subset(8, 0.5, 0) == sorted(label_subset(8, 0.5, 0)) and len(label_subset(8, 0.5, 0)) == 4
    with pytest.raises(ValueError, match="label fraction must be in"):
        label_subset(8, 0.0, 0)
    cfg = TrainConfig(epochs=1, batch_size=2, lr=2e-3, weight_decay=0.01)
    task = DetectionTask(score_threshold=0.05)
    settings = DetectionConfig(head=DetectionHead(head_stride=2))
    finetune(task, settings, FinetuneRun(NUSCENES, PROFILE, store, tmp_path / "ft", cfg, DistInfo(), label_fraction=0.5,
                                         progress=False))
    assert (tmp_path / "ft" / "model.pt").exists() and (tmp_path / "ft" / "init_report.json").exists()
    state = torch.load(tmp_path / "ft" / "model.pt", weights_only=False)
    assert state["format"] == "gpicture-detection" and state["head"]["head_stride"] == 2
    assert DetectionHead.from_dict(state["head"]) == settings.head  # the head's whole shape travels with the model
    n_frames = len(VoxelStore.open(store))
    assert json.loads((tmp_path / "ft" / "init_report.json").read_text())["frames"] == round(0.5 * n_frames)

    src = VoxelStore.open(store)
    det = load_model(task, tmp_path / "ft" / "model.pt", NUSCENES, src.attrs)
    assert isinstance(det, Detector) and det.stride == 2 and not det.training
    with pytest.raises(ValueError, match="not a gpicture detection model"):
        load_model(task, tmp_path / "ft" / "checkpoint.pt", NUSCENES, src.attrs)
    with pytest.raises(ValueError, match="a nuscenes model, the store holds waymo"):
        load_model(task, tmp_path / "ft" / "model.pt", WAYMO, {**src.attrs, "dataset": "waymo"})
    with pytest.raises(ValueError, match="no such detection model"):
        load_model(task, tmp_path / "nothing.pt", NUSCENES, src.attrs)
    preds = list(predict(task, det, store))
    assert len(preds) == len(src) and all(isinstance(p, DetectionPrediction) for p in preds)
    assert [p.frame_index for p in preds] == list(range(len(src))) and [p.frame_id for p in preds] == src.frame_ids
    for p in preds:
        assert p.boxes.shape == (len(p.scores), 7) and p.velocity.shape == (len(p.scores), 2)
        assert (p.scores > 0.05).all() and set(p.labels.tolist()) <= set(NUSCENES.detection_classes)
    sub = lidar_boxes_to_submission(preds, src.pose)
    write_submission(sub, tmp_path / "sub.json")
    root = Path(src.attrs["source_root"])
    metrics = evaluate_submission(root, "v1.0-mini", "mini_val", tmp_path / "sub.json", tmp_path / "eval")
    assert 0.0 <= metrics["mAP"] <= 1.0 and set(metrics["per_class_AP"]) >= {"car", "pedestrian"}
    # the task's writer and scorer give the same file and scores
    path = predictions_file(NUSCENES, tmp_path / "rep")
    assert path.name == "results_nusc.json"
    n = write_detections(NUSCENES, preds, src, path)
    assert n == sum(len(v) for v in sub["results"].values())
    scored = score_detections(NUSCENES, path, store, tmp_path / "eval2", RawSource(root, "v1.0-mini", "mini_val"))
    assert scored["mAP"] == pytest.approx(metrics["mAP"]) and scored["NDS"] == pytest.approx(metrics["NDS"])
