"""How semantic a teacher's cached features are: cluster purity and a linear probe.

Every canonical voxel of a store that holds labelled points gets the majority evaluation class
of its points (nuScenes: the 16 lidarseg classes of the keyframe points; Waymo: the 22
segmentation classes); voxels without a valid teacher feature or without a label are left out.

- **Cluster purity** (val store): k-means with K clusters (the I²Mask K, ``pretrain.mask.n_clusters``)
  on the voxels' features, frame by frame as I²Mask clusters them; purity = the fraction of
  voxels whose class is their cluster's most frequent class. Features that carry no class
  information score about the share of the most frequent class in a cluster of mixed voxels.
- **Linear probe** (train -> val): a linear softmax classifier on the frozen train features
  (full-batch L-BFGS, class-balanced cross-entropy), its voxel-level mIoU on the val features
  over the classes present in val.

Both are computed the same way for any teacher (a Seal checkpoint, the stand-in, the random
network), so their figures compare teachers directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpicture.data.spec import DatasetSpec, dataset_spec
from gpicture.data.store import VoxelStore
from gpicture.models.i2mask import i2mask, kmeans
from gpicture.teacher.cache import TeacherStore


@dataclass(frozen=True)
class LabelledFeatures:
    """Teacher features (V, 64) float32 of labelled voxels, their class (V,) int64 (1..C) and frame (V,)."""

    features: np.ndarray
    labels: np.ndarray
    frame: np.ndarray
    class_names: list[str]  # index 0 the ignored class


def voxel_labels(point_voxel: np.ndarray, point_labels: np.ndarray, n_voxels: int, n_classes: int) -> np.ndarray:
    """Majority class (1..C) of each voxel's points; 0 where no point is labelled (ties: smallest class)."""
    ok = point_labels > 0
    counts = np.zeros((n_voxels, n_classes), dtype=np.int64)
    np.add.at(counts, (point_voxel[ok], point_labels[ok]), 1)
    out = counts.argmax(1)
    out[counts.max(1) == 0] = 0
    return out


def labelled_features(store: Path, teacher: Path, max_frames: int | None = None) -> LabelledFeatures:
    src = VoxelStore.open(store)
    spec: DatasetSpec = dataset_spec(src.attrs["dataset"])
    tea = TeacherStore.open(teacher, src)
    if not src.attrs.get("has_seg_labels"):
        raise ValueError(f"{store}: the store has no segmentation labels to probe the teacher with")
    names, lut = spec.segmentation_eval_classes(list(src.attrs["classes"]))
    feats, labels, frames = [], [], []
    for i in range(len(src) if max_frames is None else min(max_frames, len(src))):
        fr = src[i]
        k = spec.segmented_count(fr)
        lab = voxel_labels(fr.point_voxel[:k], lut[fr.seg_labels[:k]], len(fr.voxel_coords), len(names))
        f, valid = tea.frame(i)
        keep = valid & (lab > 0)
        feats.append(f[keep])
        labels.append(lab[keep])
        frames.append(np.full(int(keep.sum()), i, dtype=np.int64))
    if not feats or sum(len(x) for x in labels) == 0:
        raise ValueError(f"{store}: no labelled voxel with a teacher feature")
    return LabelledFeatures(np.concatenate(feats), np.concatenate(labels), np.concatenate(frames), names)


def cluster_purity(data: LabelledFeatures, k: int, seed: int = 0) -> float:
    """Mean over frames (weighted by voxels) of the k-means purity of each frame's voxels."""
    g = torch.Generator().manual_seed(seed)
    hit = total = 0
    for i in np.unique(data.frame):
        sel = data.frame == i
        x = torch.from_numpy(data.features[sel])
        if len(x) < k:
            continue
        assign = kmeans(x, k, generator=g)[0].numpy()
        lab = data.labels[sel]
        table = np.zeros((k, len(data.class_names)), dtype=np.int64)
        np.add.at(table, (assign, lab), 1)
        hit += int(table.max(1).sum())
        total += len(lab)
    return hit / total if total else float("nan")


def masking_ratios(data: LabelledFeatures, k: int, n_partition: list[int], lambda_threshold: float,
                   base_ratio: list[float], seed: int = 0) -> dict[str, float | None]:
    """Mean I²Mask masking ratio per class: I²Mask (pre-training's settings) on each frame's
    labelled voxels, the masked share of each class's voxels over all frames (None: absent).
    A teacher whose clusters follow the classes gives the classes different ratios."""
    g = torch.Generator().manual_seed(seed)
    c = len(data.class_names)
    masked = np.zeros(c)
    total = np.zeros(c)
    for i in np.unique(data.frame):
        sel = data.frame == i
        res = i2mask(torch.from_numpy(data.features[sel]), k, n_partition, lambda_threshold, base_ratio, generator=g)
        lab = data.labels[sel]
        masked += np.bincount(lab, weights=res.mask.numpy().astype(np.float64), minlength=c)
        total += np.bincount(lab, minlength=c)
    return {name: (round(float(masked[j] / total[j]), 4) if total[j] else None)
            for j, name in enumerate(data.class_names) if j > 0}


@dataclass(frozen=True)
class ProbeResult:
    """A linear probe's voxel-level IoU per class on the val voxels (None: class absent in val and
    never predicted) and their mean over the classes present."""

    miou: float
    per_class: dict[str, float | None]


def linear_probe(train: LabelledFeatures, val: LabelledFeatures, steps: int = 100, seed: int = 0) -> ProbeResult:
    """Softmax regression on frozen train features (class-balanced cross-entropy, L-BFGS), scored on val."""
    torch.manual_seed(seed)
    c = len(train.class_names)
    x = torch.from_numpy(train.features)
    y = torch.from_numpy(train.labels)
    counts = torch.bincount(y, minlength=c).float()
    weight = torch.where(counts > 0, counts.sum() / (counts.clamp(min=1) * (counts > 0).sum()), torch.zeros(()))
    lin = torch.nn.Linear(x.shape[1], c)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(x), y, weight=weight) + 1e-4 * lin.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        logits = lin(torch.from_numpy(val.features))
        logits[:, 0] = -torch.inf  # never the ignored class
        pred = logits.argmax(1).numpy()
    gt = val.labels
    per_class: dict[str, float | None] = {}
    ious = []
    for j, name in enumerate(train.class_names[1:], start=1):
        inter = int(((pred == j) & (gt == j)).sum())
        union = int(((pred == j) | (gt == j)).sum())
        if (gt == j).any():
            ious.append(inter / union)
            per_class[name] = inter / union
        else:
            per_class[name] = None if union == 0 else 0.0
    return ProbeResult(float(np.mean(ious)) if ious else float("nan"), per_class)
