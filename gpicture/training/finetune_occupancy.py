"""Semantic-occupancy fine-tuning (``finetune.occupancy``): data, training run, loading, prediction.

Only frames with ground truth take part (nuScenes: frames with occupancy rows; Waymo: frames
with segmentation labels), and the label fraction is drawn among them. Training augmentation is
limited to the x / y mirror flips, which act on the occupancy target as an exact index flip
(the grid must be symmetric about the flipped axis); voxelization happens after the flip.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpicture.data.occupancy_targets import (
    OccupancyGridSpec,
    dense_target,
    frame_ground_truth,
    frames_with_ground_truth,
)
from gpicture.data.dataset import VoxelStoreDataset, stack_voxelized
from gpicture.data.store import VoxelStore
from gpicture.data.voxelize import VoxelGrid
from gpicture.models.occupancy import OccupancyBatch, Occupier
from gpicture.models.student import Student, StudentConfig
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

MODEL_FORMAT = "gpicture-occupancy"


def occupancy_classes(dataset: str, store_attrs: dict[str, Any]) -> list[str]:
    """Names of labels 1..K: nuScenes' 16 lidarseg evaluation classes (devkit names), or the
    Waymo segmentation classes of the store (UNDEFINED excluded)."""
    if dataset == "nuscenes":
        from gpicture.data.taxonomy import LIDARSEG16

        return list(LIDARSEG16[1:])
    if dataset == "waymo":
        return list(store_attrs["classes"][1:])
    raise ValueError(f"unknown dataset {dataset!r} (nuscenes or waymo)")


@dataclass(frozen=True)
class OccupancySettings:
    """Grid, head and training-data settings of occupancy fine-tuning (``finetune.occupancy``)."""

    grid: OccupancyGridSpec
    empty_weight: float = 0.1  # cross-entropy weight of the empty class (the others: 1)
    trunk_channels: int = 64  # 2D BEV trunk width
    flip_x: bool = True  # mirror y -> -y (needs a grid symmetric in y)
    flip_y: bool = True  # mirror x -> -x (needs a grid symmetric in x)

    def __post_init__(self) -> None:
        r = self.grid.point_cloud_range
        for on, lo, hi, name in ((self.flip_x, r[1], r[4], "flip_x (y)"), (self.flip_y, r[0], r[3], "flip_y (x)")):
            if on and not np.isclose(lo, -hi):
                raise ValueError(f"finetune.occupancy.augment.{name.split()[0]}: the occupancy grid's {name[-2]} range "
                                 f"[{lo}, {hi}] is not symmetric about 0, so a flip is no index flip; turn it off")
        if self.empty_weight <= 0:
            raise ValueError(f"finetune.occupancy.empty_weight must be > 0, got {self.empty_weight}")

    @classmethod
    def from_params(cls, sec: dict[str, Any], dataset: str) -> OccupancySettings:
        """From the (profile-merged) ``finetune.occupancy`` section: ``grid.<dataset>``,
        ``empty_weight``, ``trunk_channels``, ``augment.{flip_x, flip_y}`` (augment null: none)."""
        grids = sec.get("grid", {})
        if dataset not in grids:
            raise ValueError(f"finetune.occupancy.grid has no entry for {dataset!r}")
        a = sec.get("augment") or {}
        return cls(grid=OccupancyGridSpec.from_params(grids[dataset]), empty_weight=float(sec.get("empty_weight", 0.1)),
                   trunk_channels=int(sec.get("trunk_channels", 64)), flip_x=bool(a.get("flip_x", False)),
                   flip_y=bool(a.get("flip_y", False)))


class OccupancyDataset(VoxelStoreDataset):
    """Frames of a store with their dense occupancy target on ``grid``; with ``augment`` the
    seeded (seed, epoch, frame) flips of :class:`OccupancySettings` are applied. ``frames`` None:
    the frames with ground truth; ``targets`` False (prediction): no target is built."""

    def __init__(self, store: str | Path, feature_names: list[str], grid: OccupancyGridSpec,
                 frames: list[int] | None = None, augment: bool = False, flip_x: bool = False, flip_y: bool = False,
                 seed: int = 0, targets: bool = True) -> None:
        super().__init__(store, frames)  # path, frames, a store opened lazily in each worker
        src = VoxelStore.open(self.path)
        self.attrs = src.attrs
        self.dataset = str(src.attrs["dataset"])
        self.store_grid = VoxelGrid(tuple(src.attrs["point_cloud_range"]), tuple(src.attrs["voxel_size"]))
        self.grid = grid
        self.frames = frames_with_ground_truth(src) if frames is None else list(frames)
        self.feature_names = list(feature_names)
        self.flip_x, self.flip_y = augment and flip_x, augment and flip_y
        self.seed, self.epoch = seed, 0
        self.targets = targets

    def __getitem__(self, i: int) -> dict:
        k = self.frames[i]
        fr = self.store[k]
        if self.targets:
            rows = frame_ground_truth(fr, self.dataset, self.grid)
            if rows is None:
                raise ValueError(f"{self.path}: frame {fr.frame_id} has no occupancy ground truth")
            target = dense_target(rows, self.grid.shape_zyx)
        else:  # prediction: no target needed (a one-voxel placeholder)
            target = np.zeros((1, 1, 1), dtype=np.uint8)
        pts = fr.points
        feats = np.stack([fr.features[n] for n in self.feature_names], 1).astype(np.float32)
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
        return {"points": pts, "features": feats, "coords": coords, "point_voxel": pv,
                "target": np.ascontiguousarray(target), "index": k}


def collate_occupancy(items: list[dict]) -> OccupancyBatch:
    """Concatenate frames: voxel rows get their batch index, point_voxel its offset."""
    return OccupancyBatch(
        **stack_voxelized(items),
        target=torch.from_numpy(np.stack([it["target"] for it in items])),
        frame_index=torch.tensor([it["index"] for it in items]), batch_size=len(items))


def _step(model: torch.nn.Module, batch: OccupancyBatch, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
    occ = model.module if hasattr(model, "module") else model
    batch = batch.to(ctx.device)
    return occ.loss_from_logits(model(batch), batch.target)  # forward through a DDP wrapper, if any


def build_model(dataset: str, model_params: dict[str, Any], store_attrs: dict[str, Any],
                settings: OccupancySettings) -> Occupier:
    """A fresh occupancy model for a store of ``dataset``."""
    student = Student(StudentConfig.from_params(model_params, store_attrs))
    return Occupier(student, len(occupancy_classes(dataset, store_attrs)), settings.grid,
                    trunk_channels=settings.trunk_channels, empty_weight=settings.empty_weight)


def run_occupancy_finetune(dataset: str, model_params: dict[str, Any], store: Path, out_dir: Path, train: TrainConfig,
                           dist: DistInfo, init: Path | None = None, label_fraction: float = 1.0,
                           settings: OccupancySettings | None = None, resume: bool = True,
                           progress: bool = True) -> dict[str, float]:
    """Fine-tune an occupancy model (student + BEV head) on ``label_fraction`` of the frames of
    ``store`` that have ground truth; writes ``model.pt``, ``init_report.json``,
    ``checkpoint.pt`` and dvclive logs in ``out_dir`` and returns the last epoch's mean losses.
    ``settings`` None: the defaults on the 0.8 m OpenOccupancy-range grid."""
    if settings is None:
        settings = OccupancySettings(OccupancyGridSpec((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.8, 0.8, 0.8)))
    src = VoxelStore.open(store)
    if src.attrs["dataset"] != dataset:
        raise ValueError(f"{store}: a {src.attrs['dataset']} store, not {dataset}")
    labelled = frames_with_ground_truth(src)
    if not labelled:
        what = "occupancy rows" if dataset == "nuscenes" else "segmentation labels"
        raise ValueError(f"{store}: no frame has {what}, so there is no occupancy ground truth to train on")
    frames = [labelled[j] for j in label_subset(len(labelled), label_fraction, train.seed)]
    ds = OccupancyDataset(store, list(model_params["point_features"]), settings.grid, frames, augment=True,
                          flip_x=settings.flip_x, flip_y=settings.flip_y, seed=train.seed)
    torch.manual_seed(train.seed)
    model = build_model(dataset, model_params, src.attrs, settings)
    out_dir = Path(out_dir)
    init_student(model.student, init, out_dir, label_fraction, len(frames), write=dist.is_main)
    key = finetune_run_key("occupancy", dataset, model_params, src.fingerprint, init, label_fraction, settings=settings)
    metrics = fit(model, ds, collate_occupancy, _step, train, out_dir, dist, hooks=EpochHook(ds), progress=progress,
                  run_key=key, resume=resume)
    if dist.is_main:
        save_atomic({"format": MODEL_FORMAT, "dataset": dataset, "class_names": occupancy_classes(dataset, src.attrs),
                     "grid": settings.grid.to_dict(), "empty_weight": settings.empty_weight,
                     "trunk_channels": settings.trunk_channels, "model_params": model_params,
                     "state": model.state_dict()}, out_dir / "model.pt")
    return metrics


def load_occupancy_model(path: Path, store_attrs: dict[str, Any]) -> Occupier:
    """The fine-tuned model saved by :func:`run_occupancy_finetune`, in eval mode (ValueError
    naming ``path`` for another file or a store of another dataset)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such occupancy model")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not a gpicture occupancy model (format {MODEL_FORMAT!r})")
    if state["dataset"] != store_attrs.get("dataset"):
        raise ValueError(f"{path}: a {state['dataset']} model, the store is {store_attrs.get('dataset')}")
    grid = OccupancyGridSpec.from_params(state["grid"])
    student = Student(StudentConfig.from_params(state["model_params"], store_attrs))
    model = Occupier(student, len(state["class_names"]), grid, trunk_channels=int(state["trunk_channels"]),
                     empty_weight=float(state["empty_weight"]))
    try:
        model.load_state_dict(state["state"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the model they describe ({str(exc).splitlines()[0]})") from exc
    return model.eval()


@torch.no_grad()
def predict(model: Occupier, store: Path, batch_size: int = 2,
            frames: list[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, (nz, ny, nx) uint8 labels, 0 empty) for every frame of ``store`` with ground
    truth (or ``frames``), in order, on the model's device. A generator: a split's dense grids are
    never all held at once."""
    model.eval()
    device = next(model.parameters()).device
    ds = OccupancyDataset(store, list(model.student.cfg.point_features), model.grid_spec, frames, targets=False)
    for b0 in range(0, len(ds), batch_size):
        items = [ds[i] for i in range(b0, min(b0 + batch_size, len(ds)))]
        labels = model.predict(collate_occupancy(items).to(device)).cpu().numpy()
        yield from ((it["index"], lab) for it, lab in zip(items, labels, strict=True))
