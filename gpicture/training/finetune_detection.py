"""Detection fine-tuning and evaluation (nuScenes DetectionEval, Waymo AP/APH).

Fine-tuning starts from a pre-trained student (``student.pt``; the loaded, missing and
unexpected keys are written to ``init_report.json``) or from scratch, on a seeded
fraction of the labelled frames, with the shared training engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpicture.data.store import VoxelStore
from gpicture.models.detection.model import Detector
from gpicture.models.student import Student, StudentConfig
from gpicture.training.augment import AugmentConfig
from gpicture.training.detection_data import (
    DetectionDataset,
    collate_detection,
    detection_classes,
)
from gpicture.training.engine import (
    DistInfo,
    StepContext,
    TrainConfig,
    fit,
    save_atomic,
)
from gpicture.training.finetune_common import (
    EpochHook,
    finetune_run_key,
    init_student,
    label_subset,
)
from gpicture.training.gt_sampling import GTSamplingConfig


@dataclass(frozen=True)
class DetectionSettings:
    """Training-time data settings of detection fine-tuning (``finetune.detection``)."""

    augment: AugmentConfig | None = AugmentConfig()
    gt_sampling: GTSamplingConfig | None = None
    head_stride: int = 1  # the CenterPoint head's output cell in BEV cells

    @classmethod
    def from_params(cls, sec: dict[str, Any], dataset: str) -> DetectionSettings:
        a = sec.get("augment")
        augment = None if not a else AugmentConfig(
            flip_x=bool(a["flip_x"]), flip_y=bool(a["flip_y"]), rotation=tuple(float(x) for x in a["rotation"]),
            scale=tuple(float(x) for x in a["scale"]), translation_std=float(a["translation_std"]))
        g = sec.get("gt_sampling")
        groups = (g or {}).get("sample_groups", {}).get(dataset)
        gt = GTSamplingConfig.from_params({"sample_groups": groups or {}, "min_points": (g or {}).get("min_points", 5)})
        tasks, _ = detection_classes(dataset)
        unknown = set(gt.sample_groups if gt else ()) - {n for t in tasks for n in t}
        if unknown:
            raise ValueError(f"finetune.detection.gt_sampling.sample_groups.{dataset}: unknown classes {sorted(unknown)}")
        return cls(augment, gt, int(sec.get("head_stride", 1)))


def _step(model: torch.nn.Module, batch, ctx: StepContext):  # noqa: ANN001, ANN202
    det = model.module if hasattr(model, "module") else model
    batch = batch.to(ctx.device)
    loss, logs = det.head.loss(model(batch), batch.boxes, batch.labels, batch.velocity)
    return loss, logs


def run_detection_finetune(dataset: str, model_params: dict[str, Any], store: Path, out_dir: Path, train: TrainConfig,
                           dist: DistInfo, init: Path | None = None, label_fraction: float = 1.0,
                           settings: DetectionSettings | None = None, resume: bool = True, progress: bool = True) -> dict[str, float]:
    """Fine-tune a detector (student + CenterPoint head) on ``label_fraction`` of the frames of
    ``store``; writes ``model.pt``, ``init_report.json``, ``checkpoint.pt`` and dvclive logs
    in ``out_dir`` and returns the last epoch's mean losses."""
    settings = settings or DetectionSettings()
    tasks, cmap = detection_classes(dataset)
    names = [n for t in tasks for n in t]
    n = len(VoxelStore.open(store))
    frames = label_subset(n, label_fraction, train.seed)
    ds = DetectionDataset(store, list(model_params["point_features"]), names, cmap, frames, settings.augment, train.seed,
                          gt_sampling=settings.gt_sampling)
    _ = ds.gt_database  # built once here, before DataLoader workers fork, so that they share it
    torch.manual_seed(train.seed)
    det = Detector(Student(StudentConfig.from_params(model_params, ds.attrs)), tasks, settings.head_stride)
    out_dir = Path(out_dir)
    init_student(det.student, init, out_dir, label_fraction, len(frames), write=dist.is_main)
    key = finetune_run_key("detection", dataset, model_params, VoxelStore.open(store).fingerprint, init, label_fraction,
                           settings=settings)
    metrics = fit(det, ds, collate_detection, _step, train, out_dir, dist, hooks=EpochHook(ds), progress=progress,
                  run_key=key, resume=resume)
    if dist.is_main:
        save_atomic({"format": "gpicture-detector", "dataset": dataset, "tasks": tasks, "head_stride": settings.head_stride,
                     "model_params": model_params,
                     "state": det.state_dict()}, out_dir / "model.pt")
    return metrics


def load_detector(path: Path, store_attrs: dict[str, Any]) -> Detector:
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != "gpicture-detector":
        raise ValueError(f"{path}: not a gpicture detector checkpoint")
    det = Detector(Student(StudentConfig.from_params(state["model_params"], store_attrs)), state["tasks"],
                   int(state.get("head_stride", 1)))
    det.load_state_dict(state["state"])
    return det.eval()


@torch.no_grad()
def predict(det: Detector, store: Path, batch_size: int = 2, score_threshold: float = 0.1) -> list[dict]:
    """Detections of every frame of a store: dicts with sample token, pose, boxes, velocity, labels, scores."""
    tasks = det.head.tasks
    names = [n for t in tasks for n in t]
    dataset = det.student.cfg
    ds = DetectionDataset(store, list(dataset.point_features), names, {}, augment_cfg=None)
    src = VoxelStore.open(store)
    out = []
    for b0 in range(0, len(ds), batch_size):
        items = [ds[i] for i in range(b0, min(b0 + batch_size, len(ds)))]
        for it, d in zip(items, det.detect(collate_detection(items), score_threshold), strict=True):
            out.append({"sample_token": src.frame_ids[it["index"]], "pose": src.pose(it["index"]),
                        "boxes": d.boxes.numpy(), "velocity": d.velocity.numpy(),
                        "labels": np.array([names[j] for j in d.labels.tolist()], dtype=object), "scores": d.scores.numpy()})
    return out
