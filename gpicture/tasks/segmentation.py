"""3D semantic segmentation as a fine-tuning task: settings, items, model, inference,
writing and scoring.

Training classes (index = the dataset's evaluation class - 1) come from the dataset spec
(:meth:`~gpicture.data.spec.DatasetSpec.segmentation_classes`):

- nuScenes: the 16 lidarseg challenge classes. The store keeps the 32 raw lidarseg classes
  (``attrs["classes"]``); they are mapped by the devkit's ``LidarsegClassMapper``; its
  ignore class (noise, vehicle.ego, ...) and unlabelled points are ignored. Only the
  keyframe points (``time_lag == 0``, the first points of a frame, in the order of the
  keyframe ``.pcd.bin`` less the points the reader removed) carry labels and are segmented;
  the accumulated sweeps only feed the encoder.
- Waymo: the segmentation classes 1..22 of ``attrs["classes"]`` (UNDEFINED = 0 and
  unlabelled points are ignored); every point of a frame is segmented.

Fine-tuning starts from a pre-trained student or from scratch, on a seeded fraction of the
frames that carry labels (Waymo labels only every fifth frame). Predictions are written in
the lidarseg submission layout (nuScenes) or per frame (Waymo) and scored by
:mod:`gpicture.eval.segmentation`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from gpicture.data.batch import VoxelBatch, VoxelItem, frame_features
from gpicture.data.dataset import VoxelStoreDataset
from gpicture.data.spec import IGNORE_INDEX, UNLABELLED, DatasetSpec, dataset_spec
from gpicture.data.store import VoxelStore
from gpicture.data.voxelize import VoxelGrid
from gpicture.eval.predictions import RawSource, SegmentationPrediction, Written
from gpicture.eval.segmentation import (
    PREDICTIONS,
    score_segmentation,
    write_segmentation,
)
from gpicture.models.segmentation import SegmentationBatch, Segmenter
from gpicture.models.student import Student, StudentConfig
from gpicture.params import Section
from gpicture.training.augment import AugmentConfig, augment
from gpicture.training.engine import unwrap


@dataclass(frozen=True)
class SegmentationHead:
    """The model-shaping settings (saved with the model)."""

    lovasz_weight: float = 1.0  # loss = CE + lovasz_weight * Lovász-softmax
    decoder_channels: int = 64  # width of the sparse-convolution decoder and point head
    grid: str = "cartesian"  # the decoder's grid: the student's "cartesian" one or "cylindrical" (the paper's)
    cylinder: tuple[int, int, int] = (480, 360, 32)  # n_rho, n_phi, n_z of the cylindrical grid

    def __post_init__(self) -> None:
        if self.grid not in ("cartesian", "cylindrical"):
            raise ValueError(f"finetune.segmentation.grid must be cartesian or cylindrical, not {self.grid!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SegmentationHead:
        return cls(float(d["lovasz_weight"]), int(d["decoder_channels"]), str(d.get("grid", "cartesian")),
                   tuple(int(v) for v in d.get("cylinder", (480, 360, 32))))


@dataclass(frozen=True)
class SegmentationConfig:
    """Settings of segmentation fine-tuning (``finetune.segmentation``) beyond the optimiser's."""

    head: SegmentationHead = field(default_factory=SegmentationHead)
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)  # None: no augmentation


@dataclass(frozen=True)
class SegmentationItem:
    """One frame: every point feeds the encoder, the points ``seg_rows`` are segmented."""

    voxels: VoxelItem
    seg_rows: np.ndarray  # (P,) int64 rows of the frame's points to segment
    labels: np.ndarray  # (P,) int64 training class index, IGNORE_INDEX where unlabelled


class SegmentationDataset(VoxelStoreDataset):
    """Frames of a store with per-point training labels, augmented (training) then voxelized
    on the store's canonical grid. With ``labelled_only`` (training) only the labelled points
    are segmented (the others cannot contribute to the loss, and Waymo labels one lidar of
    five); otherwise every segmented point is, in store order."""

    def __init__(self, store: str | Path, feature_names: list[str], frames: list[int] | None = None,
                 augment_cfg: AugmentConfig | None = None, seed: int = 0, labelled_only: bool = False) -> None:
        super().__init__(store, frames)  # path, frames, a store opened lazily in each worker
        src = VoxelStore.open(self.path)
        self.attrs = src.attrs
        self.spec = dataset_spec(src.attrs["dataset"])
        self.class_names, self.lut = self.spec.segmentation_classes(src.attrs["classes"])
        self.grid = VoxelGrid(tuple(src.attrs["point_cloud_range"]), tuple(src.attrs["voxel_size"]))
        self.feature_names = list(feature_names)
        self.augment_cfg, self.seed = augment_cfg, seed
        self.labelled_only = labelled_only
        self.epoch = 0

    def __getitem__(self, i: int) -> SegmentationItem:
        k = self.frames[i]
        fr = self.store[k]
        n_seg = self.spec.segmented_count(fr)
        seg = fr.seg_labels[:n_seg] if fr.seg_labels is not None else np.full(n_seg, UNLABELLED, np.uint8)
        labels = self.lut[seg]
        rows = np.flatnonzero(labels != IGNORE_INDEX) if self.labelled_only else np.arange(n_seg)
        pts = fr.points
        feats = frame_features(fr, self.feature_names)
        if self.augment_cfg is not None:
            rng = np.random.default_rng([self.seed, self.epoch, k])
            pts, _, _ = augment(pts, np.zeros((0, 7), np.float32), np.zeros((0, 2), np.float32), self.augment_cfg, rng)
            coords, pv = self.grid.voxelize(pts)
        else:  # the store's own voxelization of the unmoved points
            coords, pv = fr.voxel_coords, fr.point_voxel
        return SegmentationItem(VoxelItem(pts, feats, coords, pv, k), rows, labels[rows])


def collate_segmentation(items: list[SegmentationItem]) -> SegmentationBatch:
    """Concatenate frames: voxel rows offset per frame, batch index prepended to the coords."""
    voxels = VoxelBatch.stack([it.voxels for it in items])
    p_off = voxels.point_ptr[:-1].numpy()
    seg_index = np.concatenate([o + it.seg_rows.astype(np.int64) for it, o in zip(items, p_off, strict=True)])
    seg_ptr = np.concatenate([[0], np.cumsum([len(it.seg_rows) for it in items])]).astype(np.int64)
    return SegmentationBatch(voxels=voxels, seg_index=torch.from_numpy(seg_index),
                             labels=torch.from_numpy(np.concatenate([it.labels for it in items])),
                             seg_ptr=torch.from_numpy(seg_ptr))


def labelled_frames(store: VoxelStore, spec: DatasetSpec) -> list[int]:
    """Indices of the frames with at least one point of a training class."""
    if not store.attrs.get("has_seg_labels"):
        raise ValueError(f"{store.path}: the store has no segmentation labels")
    _, lut = spec.segmentation_classes(store.attrs["classes"])
    out = []
    for i in range(len(store)):
        fr = store[i]
        if fr.seg_labels is not None and (lut[fr.seg_labels[:spec.segmented_count(fr)]] != IGNORE_INDEX).any():
            out.append(i)
    if not out:
        raise ValueError(f"{store.path}: no frame has a labelled point of a {spec.name} segmentation class")
    return out


@dataclass(frozen=True)
class SegmentationTask:
    """The segmentation task."""

    name: str = "segmentation"
    collate: ClassVar = staticmethod(collate_segmentation)
    head_type: ClassVar = SegmentationHead

    def settings(self, sec: Section | dict[str, Any], spec: DatasetSpec) -> SegmentationConfig:
        """From the merged ``finetune.segmentation`` section (the keys are the same for both
        datasets), each value checked where it is read (the message names its key)."""
        s = Section.of(sec, "finetune.segmentation")
        cylinder = s.integers("cylinder", 1, length=3) if s.raw("cylinder", None) is not None else (480, 360, 32)
        head = SegmentationHead.from_dict({"lovasz_weight": s.number("lovasz_weight", 0.0, default=1.0),
                                           "decoder_channels": s.integer("decoder_channels", 1, default=64),
                                           "grid": s.text("grid", default="cartesian"), "cylinder": cylinder})
        return SegmentationConfig(head, AugmentConfig.from_params(s.raw("augment", None)))

    def labelled_frames(self, store: VoxelStore, spec: DatasetSpec) -> list[int]:
        return labelled_frames(store, spec)

    def dataset(self, store: Path, spec: DatasetSpec, feature_names: list[str], frames: list[int],
                settings: SegmentationConfig, seed: int) -> SegmentationDataset:
        return SegmentationDataset(store, feature_names, frames, settings.augment, seed, labelled_only=True)

    def prediction_set(self, model: Segmenter, store: Path) -> SegmentationDataset:
        return SegmentationDataset(store, list(model.student.cfg.point_features))  # every segmented point, as stored

    def build(self, spec: DatasetSpec, model_params: dict[str, Any], store_attrs: dict[str, Any],
              head: SegmentationHead) -> Segmenter:
        names, _ = spec.segmentation_classes(store_attrs["classes"])
        return Segmenter(Student(StudentConfig.from_params(model_params, store_attrs)), len(names),
                         hidden=head.decoder_channels, lovasz_weight=head.lovasz_weight,
                         cylinder=head.cylinder if head.grid == "cylindrical" else None)

    def loss(self, model: nn.Module, batch: SegmentationBatch) -> tuple[Tensor, dict[str, float]]:
        return unwrap(model).loss_from_logits(model(batch), batch.labels)  # forward through a DDP wrapper

    def infer(self, model: Segmenter, batch: SegmentationBatch, frame_ids: list[str]) -> list[SegmentationPrediction]:
        pred = (model.predict(batch) + 1).to(torch.uint8).cpu().numpy()  # training index -> evaluation class
        ptr = batch.seg_ptr.cpu().numpy()
        return [SegmentationPrediction(fid, int(k), pred[ptr[j]:ptr[j + 1]])
                for j, (fid, k) in enumerate(zip(frame_ids, batch.voxels.frame_index.tolist(), strict=True))]

    def write(self, spec: DatasetSpec, preds: Iterable[SegmentationPrediction], store: Path, report_dir: Path,
              source: RawSource | None) -> Written:
        n = write_segmentation(spec, preds, store, report_dir, source)
        return Written(Path(report_dir) / PREDICTIONS, n, "frames")

    def score(self, spec: DatasetSpec, predictions: Path, store: Path, report_dir: Path,
              source: RawSource | None) -> dict[str, Any]:
        return score_segmentation(spec, predictions, store, report_dir, source)
