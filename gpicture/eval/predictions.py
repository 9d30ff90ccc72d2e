"""The predictions of each task, one type from the model to the evaluator.

A task's inference yields one of these per frame; only the writers of
:mod:`gpicture.eval` turn them into the official formats (the nuScenes submission JSON,
Waymo ``metrics_pb2.Objects``, lidarseg ``.bin`` files, nuScenes-Occupancy ``.npy`` rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpicture.data.occupancy_targets import OccupancyGridSpec


@dataclass(frozen=True)
class DetectionPrediction:
    """One frame's detected boxes in its points' frame (nuScenes: the keyframe LiDAR frame;
    Waymo: the vehicle frame)."""

    frame_id: str  # the store's frame id (nuScenes sample token, Waymo <context>/<timestamp>)
    frame_index: int  # the frame's index in its store
    boxes: np.ndarray  # (K, 7) float x, y, z, l, w, h, yaw (m, rad)
    scores: np.ndarray  # (K,) float in [0, 1]
    labels: np.ndarray  # (K,) object: detection class names
    velocity: np.ndarray  # (K, 2) float vx, vy (m/s)


@dataclass(frozen=True)
class SegmentationPrediction:
    """One frame's predicted class per segmented point (nuScenes: its keyframe points, in
    store order; Waymo: every point)."""

    frame_id: str
    frame_index: int
    labels: np.ndarray  # (P,) uint8 evaluation class (nuScenes lidarseg 1..16, Waymo 1..22)


@dataclass(frozen=True)
class OccupancyPrediction:
    """One frame's semantic occupancy on the run's occupancy grid."""

    frame_id: str
    frame_index: int
    labels: np.ndarray  # (nz, ny, nx) uint8: 0 empty, 1..K the occupancy classes
    grid: OccupancyGridSpec  # the grid of `labels`


@dataclass(frozen=True)
class RawSource:
    """Where the official tools find a split's raw data (nuScenes: the devkit's tables and
    eval set; Waymo scoring reads only the store)."""

    root: Path
    version: str
    eval_set: str  # the devkit's split name, e.g. mini_val

    @classmethod
    def of_store(cls, attrs: dict, root: Path | None = None) -> RawSource:
        """The raw split a store was converted from (its attrs ``source_root``, ``version``,
        ``split``); ``root`` overrides where that data lies now (the store records the path
        as given to ``convert``, relative to the working folder it ran in)."""
        return cls(Path(root if root is not None else attrs["source_root"]), str(attrs.get("version", "")),
                   str(attrs["split"]))


@dataclass(frozen=True)
class Written:
    """A predictions file (or folder) written for a split."""

    path: Path  # what the scorer reads
    count: int
    unit: str  # "boxes", "frames"


def finite(obj: Any) -> Any:
    """NaN/inf -> None, recursively (DVC metrics files are strict JSON)."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
