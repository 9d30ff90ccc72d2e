"""Reference predictions that learn nothing from the points: the floor a model must beat.

``majority``: every segmented point of every frame gets the evaluation class that is most
frequent among the labelled points of the *training* store (never the split being scored).
Scored by the official tools like any model's predictions (``gpicture evaluate --baseline
majority``), it says what an mIoU means on a small split: on the 3 real nuScenes val
keyframes a model that predicts "terrain" everywhere already scores a few points.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpicture.data.spec import DatasetSpec
from gpicture.data.store import VoxelStore
from gpicture.eval.predictions import SegmentationPrediction


@dataclass(frozen=True)
class MajorityClass:
    """The most frequent evaluation class of a training store's segmented, labelled points."""

    label: int  # evaluation class index (nuScenes lidarseg 1..16, Waymo 1..22)
    name: str
    fraction: float  # of the labelled training points


def majority_class(spec: DatasetSpec, train_store: Path) -> MajorityClass:
    """The most frequent evaluation class among the segmented points of ``train_store``
    (ignored / unlabelled points not counted; ties: the smallest class index)."""
    src = VoxelStore.open(train_store)
    if src.attrs["dataset"] != spec.name:
        raise ValueError(f"{train_store}: a {src.attrs['dataset']} store, not {spec.name}")
    if not src.attrs.get("has_seg_labels"):
        raise ValueError(f"{train_store}: the store has no segmentation labels")
    names, lut = spec.segmentation_eval_classes(list(src.attrs["classes"]))
    counts = np.zeros(len(names), dtype=np.int64)
    for i in range(len(src)):
        fr = src[i]
        counts += np.bincount(lut[fr.seg_labels[: spec.segmented_count(fr)]], minlength=len(names))
    counts[0] = 0  # the ignore class
    if counts.sum() == 0:
        raise ValueError(f"{train_store}: no labelled point to count")
    label = int(np.argmax(counts))
    return MajorityClass(label, names[label], float(counts[label] / counts.sum()))


def constant_predictions(spec: DatasetSpec, store: Path, label: int) -> Iterator[SegmentationPrediction]:
    """Class ``label`` for every segmented point of every frame of ``store``."""
    src = VoxelStore.open(store)
    for i in range(len(src)):
        fr = src[i]
        yield SegmentationPrediction(fr.frame_id, i, np.full(spec.segmented_count(fr), label, dtype=np.uint8))
