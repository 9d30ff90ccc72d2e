"""The GPICTURE pre-training loop: I²Mask per frame, hierarchical reconstruction, DGPL.

Masks come from I²Mask on each frame's teacher features, on the batch's device (the GPU
in a CUDA run), with a CPU generator seeded by (seed, epoch, frame), so they do not depend
on batch composition, process count, resumption or the device's random-number engine. DGPL records the first layers' activations on a fixed probe batch at the
end of every epoch (in memory, saved in the checkpoint) and gates the teacher loss
from epoch 2 on.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gpicture.data.store import VoxelStore
from gpicture.models.dgpl import DifferentialGate
from gpicture.models.i2mask import i2mask_batch
from gpicture.models.pretrain import (
    GPicturePretrainer,
    PretrainBatch,
    ReconstructionConfig,
)
from gpicture.models.student import Student, StudentConfig
from gpicture.params import Section
from gpicture.teacher.cache import TeacherStore
from gpicture.training.engine import (
    DistInfo,
    StepContext,
    TrainConfig,
    fit,
    run_key,
    save_atomic,
)
from gpicture.training.finetune import label_subset
from gpicture.training.pretrain_data import PretrainDataset, collate_pretrain
from gpicture.workers import raise_if_stopped


@dataclass(frozen=True)
class MaskConfig:
    n_clusters: int = 8
    n_partition: tuple[int, ...] = (3, 3, 2)
    lambda_threshold: float = 0.6
    base_mask_ratio: tuple[float, ...] = (0.9, 0.45, 0.0)

    @classmethod
    def from_section(cls, m: Section) -> MaskConfig:
        """From ``pretrain.mask`` (n_clusters, n_partition, lambda_threshold, base_ratio), each key
        checked where it is read (absent keys: the defaults)."""
        d = cls()
        return cls(m.integer("n_clusters", 1, default=d.n_clusters),
                   m.integers("n_partition", 1) if "n_partition" in m else d.n_partition,
                   m.number("lambda_threshold", 0.0, 1.0, default=d.lambda_threshold),
                   m.numbers("base_ratio", 0.0, 1.0, high_open=True) if "base_ratio" in m else d.base_mask_ratio)


@dataclass(frozen=True)
class DGPLConfig:
    delta: float = 0.2
    gamma: float = 10.0
    first_layers: int = 4
    probe_frames: int = 2


def frame_seed(seed: int, epoch: int, frame: int) -> int:
    return int.from_bytes(hashlib.sha256(f"mask:{seed}:{epoch}:{frame}".encode()).digest()[:8], "little") >> 1


def masks_for_batch(batch: PretrainBatch, cfg: MaskConfig, seed: int, epoch: int) -> torch.Tensor:
    """I²Mask of every frame of the batch on the batch's device, each frame with its own
    (seed, epoch, frame) generator. The frames' voxel counts are read once (one host sync
    for the batch); k-means itself reads back its convergence tests."""
    coords = batch.voxels.voxel_coords
    mask = torch.zeros(len(coords), dtype=torch.bool, device=coords.device)
    bidx = coords[:, 0].long()
    order = torch.argsort(bidx, stable=True)  # each frame's rows, in increasing order
    nb = batch.batch_size
    counts = torch.bincount(bidx, minlength=nb)[:nb]
    head = torch.cat([counts, batch.voxels.frame_index.to(counts.device)]).tolist()  # one read for both
    sizes, frames = head[:nb], head[nb:]
    for b, rows in enumerate(torch.split(order[:sum(sizes)], sizes)):  # a handful of frames per batch
        gen = torch.Generator(device="cpu").manual_seed(frame_seed(seed, epoch, int(frames[b])))
        m, _ = i2mask_batch(batch.teacher[rows], torch.zeros(len(rows), dtype=torch.long, device=coords.device),
                            valid=batch.teacher_valid[rows], n_clusters=cfg.n_clusters,
                            n_partition=tuple(cfg.n_partition), lambda_threshold=cfg.lambda_threshold,
                            base_mask_ratio=tuple(cfg.base_mask_ratio), generator=gen)
        mask[rows] = m
    return mask


class DGPLHooks:
    """Engine hooks: beta at each epoch start, the probe activations at each epoch end."""

    def __init__(self, cfg: DGPLConfig, probe: PretrainBatch, device: torch.device) -> None:
        self.gate = DifferentialGate(first_layers=cfg.first_layers, delta=cfg.delta, gamma=cfg.gamma)
        self.cfg = cfg
        self.probe = probe
        self.device = device

    def epoch_start(self, epoch: int) -> dict[str, float]:
        beta = self.gate.beta(epoch)
        return {"beta": float(beta), "c_r": float(self.gate.last_c_r or 0.0)}

    def epoch_end(self, epoch: int, model: nn.Module) -> dict[str, float]:
        was = model.training
        model.eval()
        acts = model.probe_activations(self.probe.to(self.device), self.cfg.first_layers)
        model.train(was)
        self.gate.record(epoch, acts)
        return {}

    def state_dict(self) -> dict[str, Any]:
        return self.gate.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gate.load_state_dict(state)


def _step(model: nn.Module, batch: PretrainBatch, ctx: StepContext, mask_cfg: MaskConfig, seed: int,
          teacher_targets: bool = True):
    batch = batch.to(ctx.device)
    mask = masks_for_batch(batch, mask_cfg, seed, ctx.epoch)
    beta = ctx.epoch_state.get("beta", 0.0) if teacher_targets else 0.0  # the ablation: points only
    losses = model(batch, mask, beta=beta)
    # device scalars: the engine reads them at its syncs, not every step
    return losses.total, {"loss_points": losses.points.mean(), "loss_teacher": losses.teacher.mean(),
                          "masked_fraction": losses.masked_fraction}


def build_pretrainer(model_params: dict[str, Any], store_attrs: dict[str, Any], alpha: tuple[float, ...],
                     pred_points: int = 16, decoder_blocks: tuple[int, ...] = (1,)) -> GPicturePretrainer:
    student = Student(StudentConfig.from_params(model_params, store_attrs))
    return GPicturePretrainer(student, ReconstructionConfig(alpha=tuple(alpha), pred_points=pred_points,
                                                             decoder_blocks=tuple(decoder_blocks)))


def scene_subset(scenes: list[str], fraction: float, seed: int) -> list[int]:
    """The frames (store indices, in order) of a seeded ``fraction`` of the scenes (segments):
    round(fraction * scenes), at least one. Whole scenes, as the paper's 20% Waymo split."""
    if not 0 < fraction <= 1:
        raise ValueError(f"pretrain.frame_fraction must be in (0, 1], got {fraction}")
    names = sorted(set(scenes))
    keep = set(np.asarray(names, dtype=object)[label_subset(len(names), fraction, seed)].tolist()) if names else set()
    return [i for i, s in enumerate(scenes) if s in keep]


def run_pretrain(model_params: dict[str, Any], store: Path, teacher: Path, out_dir: Path, train: TrainConfig,
                 alpha: tuple[float, ...], mask: MaskConfig, dgpl: DGPLConfig, dist: DistInfo,
                 true_points: int = 64, pred_points: int = 16, decoder_blocks: tuple[int, ...] = (1,),
                 resume: bool = True, stop_after_epochs: int | None = None, progress: bool = True,
                 teacher_targets: bool = True, frame_fraction: float = 1.0,
                 dataset: str | None = None) -> dict[str, float]:
    """Pre-train a student on a store + teacher store; writes ``out_dir/checkpoint.pt`` each
    epoch, dvclive logs, and ``out_dir/student.pt`` (the backbone, for fine-tuning) at the end.
    ``teacher_targets`` False is the ablation without the teacher reconstruction targets
    (beta = 0 throughout: point targets only; the I2Mask still clusters teacher features).
    ``frame_fraction`` < 1 pre-trains on the frames of a seeded fraction of the scenes.
    ``dataset`` (the model profile's): a store of another dataset is refused, naming it."""
    src = VoxelStore.open(store)
    if dataset is not None and src.attrs.get("dataset") != dataset:
        raise ValueError(f"{store}: a {src.attrs.get('dataset')} store, but the pre-training is on {dataset} "
                         f"(--dataset {dataset}): pass a {dataset} store")
    frames = None
    if frame_fraction < 1:
        frames = scene_subset(src.frame_scenes, frame_fraction, train.seed)
    data = PretrainDataset(store, teacher, frames)
    attrs = data.attrs
    torch.manual_seed(train.seed)  # the same initial weights in every run and process
    model = build_pretrainer(model_params, attrs, alpha, pred_points, decoder_blocks)
    feature_names = list(model.student.cfg.point_features)
    collate = functools.partial(collate_pretrain, feature_names=feature_names,
                                voxel_size=tuple(attrs["voxel_size"]), point_cloud_range=tuple(attrs["point_cloud_range"]),
                                max_points=true_points)
    probe = collate([data[i] for i in range(min(dgpl.probe_frames, len(data)))])
    hooks = DGPLHooks(dgpl, probe, dist.device)
    step = functools.partial(_step, mask_cfg=mask, seed=train.seed, teacher_targets=teacher_targets)
    key = run_key(model_params=model_params, alpha=list(alpha), mask=asdict(mask), dgpl=asdict(dgpl),
                  true_points=true_points, pred_points=pred_points, decoder_blocks=list(decoder_blocks),
                  teacher_targets=teacher_targets, frames=frames,
                  store=src.fingerprint, teacher=TeacherStore.open(teacher).settings)
    metrics = fit(model, data, collate, step, train, out_dir, dist, hooks=hooks, resume=resume,
                  stop_after_epochs=stop_after_epochs, progress=progress, run_key=key, frame_ids=src.frame_ids)
    raise_if_stopped()  # SIGTERM / SIGINT after the last step: interrupted, so no final student
    if dist.is_main and (stop_after_epochs is None or _finished(out_dir, train.epochs)):
        save_student(model.student, model_params, attrs, out_dir / "student.pt", alpha=tuple(alpha))
    return metrics


def _finished(out_dir: Path, epochs: int) -> bool:
    state = torch.load(out_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    return int(state["epoch"]) + 1 >= epochs


def save_student(student: Student, model_params: dict[str, Any], store_attrs: dict[str, Any], path: Path,
                 alpha: tuple[float, ...] | None = None) -> None:
    """The pre-trained backbone, with what is needed to rebuild it (and the reconstruction
    weights ``alpha`` it was trained with), written atomically."""
    save_atomic({"format": "gpicture-student", "student": student.state_dict(), "model_params": model_params,
                 "grid": {k: store_attrs[k] for k in ("voxel_size", "point_cloud_range", "grid_shape_zyx")},
                 "dataset": store_attrs.get("dataset"), "alpha": None if alpha is None else list(alpha)}, Path(path))
