"""Semantic occupancy as a fine-tuning task (``finetune.occupancy``): settings, items, model,
inference, writing and scoring.

Only frames with ground truth take part (nuScenes: frames with occupancy rows; Waymo: frames
with segmentation labels; :mod:`gpicture.data.occupancy_targets`), and the label fraction is
drawn among them. Training augmentation is limited to the x / y mirror flips, which act on
the occupancy target as an exact index flip (the grid must be symmetric about the flipped
axis); voxelization happens after the flip. Predictions are nuScenes-Occupancy ``.npy`` rows
scored by :mod:`gpicture.eval.occupancy`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from gpicture.data.batch import VoxelBatch, VoxelItem, frame_features
from gpicture.data.dataset import VoxelStoreDataset
from gpicture.data.occupancy_targets import (
    OccupancyGridSpec,
    dense_target,
    frame_ground_truth,
    frames_with_ground_truth,
    store_truth,
)
from gpicture.data.spec import DatasetSpec, dataset_spec
from gpicture.data.store import VoxelStore
from gpicture.data.voxelize import VoxelGrid
from gpicture.eval.occupancy import predictions_folder, score_occupancy, write_occupancy
from gpicture.eval.predictions import OccupancyPrediction, RawSource, Written
from gpicture.models.occupancy import OccupancyBatch, Occupier
from gpicture.models.student import Student, StudentConfig
from gpicture.params import Section
from gpicture.training.engine import unwrap

DEFAULT_GRID = OccupancyGridSpec((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.8, 0.8, 0.8))  # OpenOccupancy's range


@dataclass(frozen=True)
class OccupancyHead:
    """The model-shaping settings (saved with the model)."""

    grid: OccupancyGridSpec = DEFAULT_GRID
    empty_weight: float = 0.1  # cross-entropy weight of the empty class (the others: 1)
    trunk_channels: int = 64  # 2D BEV trunk width

    def __post_init__(self) -> None:
        if self.empty_weight <= 0:
            raise ValueError(f"finetune.occupancy.empty_weight must be > 0, got {self.empty_weight}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OccupancyHead:
        return cls(OccupancyGridSpec.from_params(d["grid"]), float(d["empty_weight"]), int(d["trunk_channels"]))


@dataclass(frozen=True)
class OccupancyConfig:
    """Head and training-data settings of occupancy fine-tuning (``finetune.occupancy``)."""

    head: OccupancyHead = field(default_factory=OccupancyHead)
    flip_x: bool = True  # mirror y -> -y (needs a grid symmetric in y)
    flip_y: bool = True  # mirror x -> -x (needs a grid symmetric in x)

    def __post_init__(self) -> None:
        r = self.head.grid.point_cloud_range
        for on, lo, hi, name in ((self.flip_x, r[1], r[4], "flip_x (y)"), (self.flip_y, r[0], r[3], "flip_y (x)")):
            if on and not np.isclose(lo, -hi):
                raise ValueError(f"finetune.occupancy.augment.{name.split()[0]}: the occupancy grid's {name[-2]} range "
                                 f"[{lo}, {hi}] is not symmetric about 0, so a flip is no index flip; turn it off")


@dataclass(frozen=True)
class OccupancyItem:
    """One frame with its dense occupancy target."""

    voxels: VoxelItem  # on the store's grid
    target: np.ndarray  # (nz, ny, nx) uint8 on the occupancy grid (prediction: a (1, 1, 1) placeholder)


class OccupancyDataset(VoxelStoreDataset):
    """Frames of a store with their dense occupancy target on ``grid``; with ``augment`` the
    seeded (seed, epoch, frame) flips of :class:`OccupancyConfig` are applied. ``frames`` None:
    the frames with ground truth; ``targets`` False (prediction): no target is built."""

    def __init__(self, store: str | Path, feature_names: list[str], grid: OccupancyGridSpec,
                 frames: list[int] | None = None, augment: bool = False, flip_x: bool = False, flip_y: bool = False,
                 seed: int = 0, targets: bool = True) -> None:
        super().__init__(store, frames)  # path, frames, a store opened lazily in each worker
        src = VoxelStore.open(self.path)
        self.attrs = src.attrs
        self.spec = dataset_spec(src.attrs["dataset"])
        self.store_grid = VoxelGrid(tuple(src.attrs["point_cloud_range"]), tuple(src.attrs["voxel_size"]))
        self.grid = grid
        self.frames = frames_with_ground_truth(src) if frames is None else list(frames)
        self.feature_names = list(feature_names)
        self.flip_x, self.flip_y = augment and flip_x, augment and flip_y
        self.seed, self.epoch = seed, 0
        self.targets = targets

    def __getitem__(self, i: int) -> OccupancyItem:
        k = self.frames[i]
        fr = self.store[k]
        if self.targets:
            rows = frame_ground_truth(fr, self.spec, self.grid)
            if rows is None:
                raise ValueError(f"{self.path}: frame {fr.frame_id} has no occupancy ground truth")
            target = dense_target(rows, self.grid.shape_zyx)
        else:  # prediction: no target needed (a one-voxel placeholder)
            target = np.zeros((1, 1, 1), dtype=np.uint8)
        pts = fr.points
        feats = frame_features(fr, self.feature_names)
        coords, pv = fr.voxel_coords, fr.point_voxel
        if self.flip_x or self.flip_y:
            rng = np.random.default_rng([self.seed, self.epoch, k])
            fx, fy = rng.random() < 0.5, rng.random() < 0.5
            if (self.flip_x and fx) or (self.flip_y and fy):
                pts = pts.copy()
                if self.flip_x and fx:  # y -> -y: row iy -> ny - 1 - iy
                    pts[:, 1] *= -1
                    target = target[:, ::-1, :]
                if self.flip_y and fy:  # x -> -x
                    pts[:, 0] *= -1
                    target = target[:, :, ::-1]
                coords, pv = self.store_grid.voxelize(pts)
        return OccupancyItem(VoxelItem(pts, feats, coords, pv, k), np.ascontiguousarray(target))


def collate_occupancy(items: list[OccupancyItem]) -> OccupancyBatch:
    """Concatenate frames: voxel rows get their batch index, point_voxel its offset."""
    return OccupancyBatch(voxels=VoxelBatch.stack([it.voxels for it in items]),
                          target=torch.from_numpy(np.stack([it.target for it in items])))


@dataclass(frozen=True)
class OccupancyTask:
    """The occupancy task."""

    name: str = "occupancy"
    collate: ClassVar = staticmethod(collate_occupancy)
    head_type: ClassVar = OccupancyHead

    def settings(self, sec: Section | dict[str, Any], spec: DatasetSpec) -> OccupancyConfig:
        """From the (profile-merged) ``finetune.occupancy`` section: ``grid.<dataset>``,
        ``empty_weight``, ``trunk_channels``, ``augment.{flip_x, flip_y}`` (augment null: none);
        each value checked where it is read (the message names its key)."""
        s = Section.of(sec, "finetune.occupancy")
        grids = s.raw("grid", {})
        if spec.name not in grids:
            raise ValueError(f"finetune.occupancy.grid has no entry for {spec.name!r}")
        g = s.sub("grid").sub(spec.name)
        vs = g.raw("voxel_size")
        size = (g.positive("voxel_size"),) * 3 if isinstance(vs, int | float) else g.voxel_size()
        grid = OccupancyGridSpec(g.numbers("point_cloud_range", length=6), size)  # type: ignore[arg-type]
        a = s.sub("augment") if s.raw("augment", None) else None
        head = OccupancyHead(grid, s.positive("empty_weight", default=0.1), s.integer("trunk_channels", 1, default=64))
        return OccupancyConfig(head, flip_x=a.flag("flip_x", default=False) if a else False,
                               flip_y=a.flag("flip_y", default=False) if a else False)

    def labelled_frames(self, store: VoxelStore, spec: DatasetSpec) -> list[int]:
        labelled = frames_with_ground_truth(store)
        truth = store_truth(spec, store.attrs)
        if not labelled:
            raise ValueError(f"{store.path}: no frame has {truth.value}, so there is no occupancy "
                             "ground truth to train on")
        if truth is not spec.occupancy_truth:
            warnings.warn(f"{store.path}: the store holds no {spec.occupancy_truth.value} (no nuScenes-Occupancy "
                          f"folder beside its raw data): occupancy ground truth is built from its {truth.value}, "
                          "as for Waymo", UserWarning, stacklevel=2)
        return labelled

    def dataset(self, store: Path, spec: DatasetSpec, feature_names: list[str], frames: list[int],
                settings: OccupancyConfig, seed: int) -> OccupancyDataset:
        return OccupancyDataset(store, feature_names, settings.head.grid, frames, augment=True,
                                flip_x=settings.flip_x, flip_y=settings.flip_y, seed=seed)

    def prediction_set(self, model: Occupier, store: Path) -> OccupancyDataset:
        # the frames with ground truth, on the model's grid, without targets
        return OccupancyDataset(store, list(model.student.cfg.point_features), model.grid_spec, targets=False)

    def build(self, spec: DatasetSpec, model_params: dict[str, Any], store_attrs: dict[str, Any],
              head: OccupancyHead) -> Occupier:
        student = Student(StudentConfig.from_params(model_params, store_attrs))
        return Occupier(student, len(spec.occupancy_classes(store_attrs["classes"])), head.grid,
                        trunk_channels=head.trunk_channels, empty_weight=head.empty_weight)

    def loss(self, model: nn.Module, batch: OccupancyBatch) -> tuple[Tensor, dict[str, float]]:
        return unwrap(model).loss_from_logits(model(batch), batch.target)  # forward through a DDP wrapper

    def infer(self, model: Occupier, batch: OccupancyBatch, frame_ids: list[str]) -> list[OccupancyPrediction]:
        labels = model.predict(batch).cpu().numpy()
        return [OccupancyPrediction(fid, int(k), lab, model.grid_spec)
                for fid, k, lab in zip(frame_ids, batch.voxels.frame_index.tolist(), labels, strict=True)]

    def write(self, spec: DatasetSpec, preds: Iterable[OccupancyPrediction], store: Path, report_dir: Path,
              source: RawSource | None) -> Written:
        return Written(predictions_folder(report_dir), write_occupancy(spec, preds, store, report_dir, source), "frames")

    def score(self, spec: DatasetSpec, predictions: Path, store: Path, report_dir: Path,
              source: RawSource | None) -> dict[str, Any]:
        return score_occupancy(spec, predictions, store, report_dir, source)
