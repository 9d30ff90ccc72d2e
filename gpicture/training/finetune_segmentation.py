"""3D semantic-segmentation fine-tuning: labels, batches, training, loading, prediction.

Training classes (index = the dataset's evaluation class - 1):
- nuScenes: the 16 lidarseg challenge classes. The store keeps the 32 raw lidarseg classes
  (``attrs["classes"]``); they are mapped by the devkit's ``LidarsegClassMapper``; its
  ignore class (noise, vehicle.ego, ...) and unlabelled points (255) are ignored. Only the
  keyframe points (``time_lag == 0``, the first points of a frame, in the order of the
  keyframe ``.pcd.bin`` less the points the reader removed) carry labels and are segmented;
  the accumulated sweeps only feed the encoder.
- Waymo: the segmentation classes 1..22 of ``attrs["classes"]`` (UNDEFINED = 0 and
  unlabelled points are ignored); every point of a frame is segmented.

Fine-tuning starts from a pre-trained student or from scratch, on a seeded fraction of the
frames that carry labels (Waymo labels only every fifth frame).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from gpicture.data.dataset import VoxelStoreDataset, stack_voxelized
from gpicture.data.store import StoreFrame, VoxelStore
from gpicture.data.voxelize import VoxelGrid
from gpicture.models.segmentation import IGNORE, SegmentationBatch, Segmenter
from gpicture.models.student import Student, StudentConfig
from gpicture.training.augment import AugmentConfig, augment
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

UNLABELLED = 255


@dataclass(frozen=True)
class SegmentationSettings:
    """Settings of segmentation fine-tuning (``finetune.segmentation``) beyond the optimiser's."""

    lovasz_weight: float = 1.0  # loss = CE + lovasz_weight * Lovász-softmax
    decoder_channels: int = 64  # width of the sparse-convolution decoder and point head
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)  # None: no augmentation

    @classmethod
    def from_params(cls, sec: dict[str, Any], dataset: str) -> SegmentationSettings:
        """From the merged ``finetune.segmentation`` section (``dataset`` is checked, the keys
        are the same for both datasets)."""
        if dataset not in ("nuscenes", "waymo"):
            raise ValueError(f"unknown dataset {dataset!r} (nuscenes or waymo)")
        a = sec.get("augment")
        aug = None if not a else AugmentConfig(
            flip_x=bool(a["flip_x"]), flip_y=bool(a["flip_y"]), rotation=tuple(float(x) for x in a["rotation"]),
            scale=tuple(float(x) for x in a["scale"]), translation_std=float(a["translation_std"]))
        return cls(lovasz_weight=float(sec.get("lovasz_weight", 1.0)),
                   decoder_channels=int(sec.get("decoder_channels", 64)), augment=aug)


def segmentation_classes(dataset: str, store_attrs: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """(names of the training classes, lookup (256,) int64 stored label -> training class
    index or IGNORE). The evaluation class of training index i is i + 1 in both datasets."""
    raw = list(store_attrs["classes"])
    lut = np.full(256, IGNORE, dtype=np.int64)
    if dataset == "nuscenes":
        mapper = nuscenes_class_mapper(raw)
        coarse = mapper.coarse_name_2_coarse_idx_mapping
        names = [n for n, i in sorted(coarse.items(), key=lambda kv: kv[1]) if i != mapper.ignore_class["index"]]
        for fine, c in mapper.fine_idx_2_coarse_idx_mapping.items():
            if c != mapper.ignore_class["index"]:
                lut[fine] = c - 1
        return names, lut
    if dataset == "waymo":
        if raw[0] != "UNDEFINED" or len(raw) > UNLABELLED:
            raise ValueError(f"Waymo store classes {raw[:3]}...: expected UNDEFINED first")
        lut[1:len(raw)] = np.arange(len(raw) - 1)
        return raw[1:], lut
    raise ValueError(f"unknown dataset {dataset!r} (nuscenes or waymo)")


def nuscenes_class_mapper(raw_classes: list[str]) -> Any:
    """The devkit's ``LidarsegClassMapper`` for a list of raw lidarseg classes in index order
    (it only reads ``lidarseg_name2idx_mapping`` from the NuScenes object)."""
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper

    return LidarsegClassMapper(SimpleNamespace(lidarseg_name2idx_mapping={n: i for i, n in enumerate(raw_classes)}))


def segmented_count(frame: StoreFrame, dataset: str) -> int:
    """How many leading points of a store frame are segmented: nuScenes the keyframe's
    (``time_lag == 0``, which the reader writes first), Waymo all."""
    if dataset != "nuscenes":
        return len(frame.points)
    key = frame.features["time_lag"] == 0
    k = int(key.sum())
    if not key[:k].all():
        raise ValueError(f"nuScenes frame {frame.frame_id}: keyframe points (time_lag 0) are not the first points")
    return k


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
        self.dataset = str(src.attrs["dataset"])
        self.class_names, self.lut = segmentation_classes(self.dataset, src.attrs)
        self.grid = VoxelGrid(tuple(src.attrs["point_cloud_range"]), tuple(src.attrs["voxel_size"]))
        self.feature_names = list(feature_names)
        self.augment_cfg, self.seed = augment_cfg, seed
        self.labelled_only = labelled_only
        self.epoch = 0

    def __getitem__(self, i: int) -> dict:
        k = self.frames[i]
        fr = self.store[k]
        n_seg = segmented_count(fr, self.dataset)
        seg = fr.seg_labels[:n_seg] if fr.seg_labels is not None else np.full(n_seg, UNLABELLED, np.uint8)
        labels = self.lut[seg]
        rows = np.flatnonzero(labels != IGNORE) if self.labelled_only else np.arange(n_seg)
        pts = fr.points
        feats = np.stack([fr.features[n] for n in self.feature_names], 1).astype(np.float32)
        if self.augment_cfg is not None:
            rng = np.random.default_rng([self.seed, self.epoch, k])
            pts, _, _ = augment(pts, np.zeros((0, 7), np.float32), np.zeros((0, 2), np.float32), self.augment_cfg, rng)
            coords, pv = self.grid.voxelize(pts)
        else:  # the store's own voxelization of the unmoved points
            coords, pv = fr.voxel_coords, fr.point_voxel
        return {"points": pts, "features": feats, "coords": coords, "point_voxel": pv, "seg_rows": rows,
                "labels": labels[rows], "index": k}


def collate_segmentation(items: list[dict]) -> SegmentationBatch:
    """Concatenate frames: voxel rows offset per frame, batch index prepended to the coords."""
    n_pts = np.array([len(it["points"]) for it in items])
    p_off = np.concatenate([[0], np.cumsum(n_pts)[:-1]])
    seg_index = np.concatenate([o + it["seg_rows"].astype(np.int64) for it, o in zip(items, p_off, strict=True)])
    seg_ptr = np.concatenate([[0], np.cumsum([len(it["seg_rows"]) for it in items])]).astype(np.int64)
    return SegmentationBatch(
        **stack_voxelized(items),
        seg_index=torch.from_numpy(seg_index), labels=torch.from_numpy(np.concatenate([it["labels"] for it in items])),
        seg_ptr=torch.from_numpy(seg_ptr), frame_index=torch.tensor([it["index"] for it in items]),
        batch_size=len(items))


def labelled_frames(store: Path) -> list[int]:
    """Indices of the frames with at least one point of a training class."""
    src = VoxelStore.open(store)
    if not src.attrs.get("has_seg_labels"):
        raise ValueError(f"{store}: the store has no segmentation labels")
    dataset = str(src.attrs["dataset"])
    _, lut = segmentation_classes(dataset, src.attrs)
    out = []
    for i in range(len(src)):
        fr = src[i]
        if fr.seg_labels is not None and (lut[fr.seg_labels[:segmented_count(fr, dataset)]] != IGNORE).any():
            out.append(i)
    if not out:
        raise ValueError(f"{store}: no frame has a labelled point of a {dataset} segmentation class")
    return out


def _step(model: torch.nn.Module, batch: SegmentationBatch, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
    seg = model.module if hasattr(model, "module") else model
    batch = batch.to(ctx.device)
    return seg.loss_from_logits(model(batch), batch.labels)  # forward through the (DDP) wrapper


def build_segmenter(dataset: str, model_params: dict[str, Any], store_attrs: dict[str, Any],
                    settings: SegmentationSettings) -> Segmenter:
    """A fresh segmenter for a dataset's training classes on the store's grid."""
    names, _ = segmentation_classes(dataset, store_attrs)
    return Segmenter(Student(StudentConfig.from_params(model_params, store_attrs)), len(names),
                     hidden=settings.decoder_channels, lovasz_weight=settings.lovasz_weight)


def run_segmentation_finetune(dataset: str, model_params: dict[str, Any], store: Path, out_dir: Path,
                              train: TrainConfig, dist: DistInfo, init: Path | None = None, label_fraction: float = 1.0,
                              settings: SegmentationSettings | None = None, resume: bool = True,
                              progress: bool = True) -> dict[str, float]:
    """Fine-tune a segmenter (student + spconv decoder) on ``label_fraction`` of the labelled
    frames of ``store``; writes ``model.pt``, ``init_report.json``, ``checkpoint.pt`` and
    dvclive logs in ``out_dir`` and returns the last epoch's mean losses."""
    settings = settings or SegmentationSettings()
    src = VoxelStore.open(store)
    if src.attrs["dataset"] != dataset:
        raise ValueError(f"{store}: a {src.attrs['dataset']} store, not {dataset}")
    labelled = labelled_frames(store)
    frames = [labelled[i] for i in label_subset(len(labelled), label_fraction, train.seed)]
    ds = SegmentationDataset(store, list(model_params["point_features"]), frames, settings.augment, train.seed,
                             labelled_only=True)
    torch.manual_seed(train.seed)
    seg = build_segmenter(dataset, model_params, src.attrs, settings)
    out_dir = Path(out_dir)
    init_student(seg.student, init, out_dir, label_fraction, len(frames), write=dist.is_main)
    key = finetune_run_key("segmentation", dataset, model_params, src.fingerprint, init, label_fraction,
                           settings=settings)
    metrics = fit(seg, ds, collate_segmentation, _step, train, out_dir, dist, hooks=EpochHook(ds), progress=progress,
                  run_key=key, resume=resume)
    if dist.is_main:
        save_atomic({"format": "gpicture-segmenter", "dataset": dataset, "model_params": model_params,
                     "num_classes": seg.num_classes, "class_names": ds.class_names,
                     "decoder_channels": settings.decoder_channels, "lovasz_weight": settings.lovasz_weight,
                     "state": seg.state_dict()}, out_dir / "model.pt")
    return metrics


def load_segmenter(path: Path, store_attrs: dict[str, Any]) -> Segmenter:
    """A fine-tuned segmenter (``model.pt``) in eval mode, on the CPU; a file that is no
    segmenter, or one for another dataset than the store's, is refused with a ValueError."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != "gpicture-segmenter":
        raise ValueError(f"{path}: not a gpicture segmenter checkpoint")
    if state["dataset"] != store_attrs.get("dataset"):
        raise ValueError(f"{path}: a {state['dataset']} segmenter, the store holds {store_attrs.get('dataset')}")
    settings = SegmentationSettings(lovasz_weight=state["lovasz_weight"], decoder_channels=state["decoder_channels"])
    seg = build_segmenter(state["dataset"], state["model_params"], store_attrs, settings)
    if seg.num_classes != state["num_classes"]:
        raise ValueError(f"{path}: {state['num_classes']} classes, the store's dataset has {seg.num_classes}")
    seg.load_state_dict(state["state"])
    return seg.eval()


@torch.no_grad()
def predict(seg: Segmenter, store: Path, batch_size: int = 2) -> Iterator[tuple[int, str, np.ndarray]]:
    """Per frame of ``store`` (in order): (frame index, frame id, (P,) uint8 predicted
    evaluation class of its segmented points: nuScenes lidarseg 1..16, Waymo 1..22). Runs
    on the segmenter's device; frames are yielded as they are predicted."""
    seg.eval()
    device = next(seg.parameters()).device
    ds = SegmentationDataset(store, list(seg.student.cfg.point_features), augment_cfg=None)
    ids = VoxelStore.open(store).frame_ids
    for b0 in range(0, len(ds), batch_size):
        batch = collate_segmentation([ds[i] for i in range(b0, min(b0 + batch_size, len(ds)))])
        pred = (seg.predict(batch.to(device)) + 1).to(torch.uint8).cpu().numpy()
        ptr = batch.seg_ptr.numpy()
        for j, k in enumerate(batch.frame_index.tolist()):
            yield k, ids[k], pred[ptr[j]:ptr[j + 1]]
