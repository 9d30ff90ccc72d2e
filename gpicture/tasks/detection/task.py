"""Detection as a fine-tuning task: settings, model, loss, inference, writing and scoring.

Fine-tuning starts from a pre-trained student or from scratch (:func:`gpicture.training.
finetune.finetune`); predictions are boxes in the points' frame
(:class:`~gpicture.eval.predictions.DetectionPrediction`), written as the nuScenes
submission JSON or Waymo ``metrics_pb2.Objects`` and scored by ``DetectionEval`` / our
Waymo AP/APH (:mod:`gpicture.eval.detection`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import Tensor, nn

from gpicture.data.spec import DatasetSpec
from gpicture.data.store import VoxelStore
from gpicture.eval.detection import predictions_file, score_detections, write_detections
from gpicture.eval.predictions import DetectionPrediction, RawSource, Written
from gpicture.models.detection.centerpoint import HeadConfig
from gpicture.models.detection.model import DetectionBatch, Detector
from gpicture.models.student import Student, StudentConfig
from gpicture.params import Section
from gpicture.tasks.detection.data import (
    DetectionDataset,
    collate_detection,
)
from gpicture.tasks.detection.gt_sampling import GTSamplingConfig
from gpicture.training.augment import AugmentConfig
from gpicture.training.engine import unwrap


@dataclass(frozen=True)
class DetectionHead:
    """The model-shaping settings (saved with the model)."""

    head_stride: int = 1  # the CenterPoint head's output cell in BEV cells
    head: HeadConfig = field(default_factory=HeadConfig)  # trunk, branches, IoU branch, NMS

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectionHead:
        h = dict(d.get("head") or {})
        for k in ("iou_rectifier", "nms_thresholds"):
            if h.get(k) is not None:
                h[k] = tuple(float(v) for v in h[k])
        return cls(int(d["head_stride"]), HeadConfig(**h))


@dataclass(frozen=True)
class DetectionConfig:
    """Settings of detection fine-tuning (``finetune.detection``) beyond the optimiser's."""

    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    gt_sampling: GTSamplingConfig | None = None
    head: DetectionHead = field(default_factory=DetectionHead)


@dataclass(frozen=True)
class DetectionTask:
    """The detection task; ``score_threshold`` drops weaker boxes at inference."""

    score_threshold: float = 0.1
    name: str = "detection"
    collate: ClassVar = staticmethod(collate_detection)
    head_type: ClassVar = DetectionHead

    def settings(self, sec: Section | dict[str, Any], spec: DatasetSpec) -> DetectionConfig:
        """From the merged ``finetune.detection`` section; ``head_stride`` and
        ``gt_sampling.min_points`` checked where they are read (the message names the key)."""
        s = Section.of(sec, "finetune.detection")
        g = s.sub("gt_sampling") if s.raw("gt_sampling", None) else None
        groups = (g.raw("sample_groups", {}) or {}).get(spec.name) if g else None
        gt = GTSamplingConfig.from_params({"sample_groups": groups or {},
                                           "min_points": g.integer("min_points", 0, default=5) if g else 5})
        unknown = set(gt.sample_groups if gt else ()) - set(spec.detection_classes)
        if unknown:
            raise ValueError(f"finetune.detection.gt_sampling.sample_groups.{spec.name}: unknown classes {sorted(unknown)}")
        head = DetectionHead.from_dict({"head_stride": s.integer("head_stride", 1, default=1),
                                        "head": s.raw("head", None) or {}})
        n = len(spec.detection_classes)
        for k in ("iou_rectifier", "nms_thresholds"):
            v = getattr(head.head, k)
            if v is not None and len(v) != n:
                raise ValueError(f"finetune.detection.head.{k}: {len(v)} values for the {n} {spec.name} classes "
                                 f"({', '.join(spec.detection_classes)})")
        return DetectionConfig(AugmentConfig.from_params(s.raw("augment", None)), gt, head)

    def labelled_frames(self, store: VoxelStore, spec: DatasetSpec) -> list[int]:
        return list(range(len(store)))  # every frame has its boxes (possibly none)

    def dataset(self, store: Path, spec: DatasetSpec, feature_names: list[str], frames: list[int],
                settings: DetectionConfig, seed: int) -> DetectionDataset:
        ds = DetectionDataset(store, feature_names, spec.detection_classes, spec.detection_class_map(), frames,
                              settings.augment, seed, gt_sampling=settings.gt_sampling)
        _ = ds.gt_database  # built once here, before DataLoader workers fork, so that they share it
        return ds

    def prediction_set(self, model: Detector, store: Path) -> DetectionDataset:
        names = [n for t in model.head.tasks for n in t]  # every frame, as stored (boxes unused)
        return DetectionDataset(store, list(model.student.cfg.point_features), names, {})

    def build(self, spec: DatasetSpec, model_params: dict[str, Any], store_attrs: dict[str, Any],
              head: DetectionHead) -> Detector:
        groups = [list(g) for g in spec.detection_groups]
        return Detector(Student(StudentConfig.from_params(model_params, store_attrs)), groups, head.head_stride,
                        head.head)

    def loss(self, model: nn.Module, batch: DetectionBatch) -> tuple[Tensor, dict[str, float]]:
        return unwrap(model).loss_from_outputs(model(batch.voxels), batch)  # forward through a DDP wrapper

    def infer(self, model: Detector, batch: DetectionBatch, frame_ids: list[str]) -> list[DetectionPrediction]:
        names = np.array([n for t in model.head.tasks for n in t], dtype=object)
        dets = model.detect(batch.voxels, self.score_threshold)
        return [DetectionPrediction(frame_id=fid, frame_index=int(k), boxes=d.boxes.cpu().numpy(),
                                    scores=d.scores.cpu().numpy(), labels=names[d.labels.cpu().numpy()],
                                    velocity=d.velocity.cpu().numpy())
                for fid, k, d in zip(frame_ids, batch.voxels.frame_index.tolist(), dets, strict=True)]

    def write(self, spec: DatasetSpec, preds: Iterable[DetectionPrediction], store: Path, report_dir: Path,
              source: RawSource | None) -> Written:
        path = predictions_file(spec, report_dir)
        return Written(path, write_detections(spec, preds, VoxelStore.open(store), path), "boxes")

    def score(self, spec: DatasetSpec, predictions: Path, store: Path, report_dir: Path,
              source: RawSource | None) -> dict[str, Any]:
        return score_detections(spec, predictions, store, report_dir, source)
