"""Detection fine-tuning and evaluation (nuScenes DetectionEval, Waymo AP/APH).

Fine-tuning starts from a pre-trained student (``student.pt``; the loaded, missing and
unexpected keys are written to ``init_report.json``) or from scratch, on a seeded
fraction of the labelled frames, with the shared training engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpicture.data.store import VoxelStore
from gpicture.models.detection.model import Detector
from gpicture.models.student import Student, StudentConfig
from gpicture.training.augment import AugmentConfig
from gpicture.training.gt_sampling import GTSamplingConfig
from gpicture.training.detection_data import DetectionDataset, collate_detection, detection_classes
from gpicture.teacher.checkpoint import file_sha256 as file_digest
from gpicture.training.engine import DistInfo, StepContext, TrainConfig, fit, save_atomic


@dataclass(frozen=True)
class DetectionSettings:
    """Training-time data settings of detection fine-tuning (``finetune.detection``)."""

    augment: AugmentConfig | None
    gt_sampling: GTSamplingConfig | None

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
        return cls(augment, gt)


def label_subset(n: int, fraction: float, seed: int) -> list[int]:
    """A seeded subset of round(fraction * n) frames (at least one), in store order."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--label-fraction must be in (0, 1], got {fraction}")
    k = max(1, round(fraction * n))
    return sorted(np.random.default_rng(seed).permutation(n)[:k].tolist())


class _EpochAugment:
    """Engine hooks: tell the dataset the epoch (its augmentation is seeded by it)."""

    def __init__(self, ds: DetectionDataset) -> None:
        self.ds = ds

    def epoch_start(self, epoch: int) -> dict[str, float]:
        self.ds.epoch = epoch
        return {}

    def epoch_end(self, epoch: int, model: torch.nn.Module) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _step(model: torch.nn.Module, batch, ctx: StepContext):  # noqa: ANN001, ANN202
    det = model.module if hasattr(model, "module") else model
    batch = batch.to(ctx.device)
    loss, logs = det.head.loss(model(batch), batch.boxes, batch.labels, batch.velocity)
    return loss, logs


def run_detection_finetune(dataset: str, model_params: dict[str, Any], store: Path, out_dir: Path, train: TrainConfig,
                           dist: DistInfo, init: Path | None = None, label_fraction: float = 1.0,
                           augment_cfg: AugmentConfig | None = AugmentConfig(), gt_sampling: GTSamplingConfig | None = None,
                           resume: bool = True, progress: bool = True) -> dict[str, float]:
    """Fine-tune a detector (student + CenterPoint head) on ``label_fraction`` of the frames of
    ``store``; writes ``model.pt``, ``init_report.json``, ``checkpoint.pt`` and dvclive logs
    in ``out_dir`` and returns the last epoch's mean losses."""
    tasks, cmap = detection_classes(dataset)
    names = [n for t in tasks for n in t]
    n = len(VoxelStore.open(store))
    frames = label_subset(n, label_fraction, train.seed)
    ds = DetectionDataset(store, list(model_params["point_features"]), names, cmap, frames, augment_cfg, train.seed,
                          gt_sampling=gt_sampling)
    _ = ds.gt_database  # built once here, before DataLoader workers fork, so that they share it
    torch.manual_seed(train.seed)
    det = Detector(Student(StudentConfig.from_params(model_params, ds.attrs)), tasks)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = det.load_pretrained(init) if init is not None else {"loaded": [], "missing": "all (from scratch)", "unexpected": []}
    if dist.is_main:
        (out_dir / "init_report.json").write_text(json.dumps(
            {"init": str(init) if init else "scratch", "label_fraction": label_fraction, "frames": len(frames),
             "loaded": len(report["loaded"]), "missing": report["missing"], "unexpected": report["unexpected"]}, indent=1))
    from gpicture.training.pretrain import run_key

    key = run_key(dataset=dataset, model_params=model_params, store=VoxelStore.open(store).fingerprint,
                  init=None if init is None else file_digest(init), label_fraction=label_fraction,
                  augment=str(augment_cfg), gt_sampling=str(gt_sampling))
    metrics = fit(det, ds, collate_detection, _step, train, out_dir, dist, hooks=_EpochAugment(ds), progress=progress,
                  run_key=key, resume=resume)
    if dist.is_main:
        save_atomic({"format": "gpicture-detector", "dataset": dataset, "tasks": tasks, "model_params": model_params,
                     "state": det.state_dict()}, out_dir / "model.pt")
    return metrics


def load_detector(path: Path, store_attrs: dict[str, Any]) -> Detector:
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != "gpicture-detector":
        raise ValueError(f"{path}: not a gpicture detector checkpoint")
    det = Detector(Student(StudentConfig.from_params(state["model_params"], store_attrs)), state["tasks"])
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
