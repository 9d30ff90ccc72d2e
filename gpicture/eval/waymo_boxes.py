"""Waymo detection ground truth and predictions as boxes, and the official metric's box
geometry: 3-D IoU of upright rotated boxes, heading accuracy, difficulty levels.

The rules are those of ``waymo_open_dataset/metrics/iou.cc`` and ``metrics_utils.cc``
(see :mod:`gpicture.eval.waymo_detection` for the whole metric).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gpicture.ops import rotated_iou

CLASSES: tuple[str, ...] = ("TYPE_VEHICLE", "TYPE_PEDESTRIAN", "TYPE_CYCLIST")
IOU_THRESHOLDS: dict[str, float] = {
    "TYPE_VEHICLE": 0.7,
    "TYPE_PEDESTRIAN": 0.5,
    "TYPE_CYCLIST": 0.5,
}
LEVEL2_MAX_POINTS = 5  # kDetectionLevel2NumPointsThreshold: <= 5 points -> LEVEL_2

_MIN_BOX_DIM = 1e-2  # iou.cc kMinBoxDim
_MAX_BOX_DIM = 1e6  # iou.cc kMaxBoxDim
_MIN_UNION = 1e-6  # iou.cc kEpsilon


@dataclass
class FrameBoxes:
    """The boxes of one frame, ground truth or predictions.

    ``boxes`` (M, 7) ``x, y, z, l, w, h, heading``; ``names`` (M,) class names (``TYPE_*``);
    ``scores`` (M,) for predictions; ``num_points`` (M,) lidar points in each GT box and
    ``difficulty`` (M,) its labelled detection difficulty (0 unknown, 1, 2) for ground truth.
    """

    boxes: np.ndarray
    names: np.ndarray
    scores: np.ndarray | None = None
    num_points: np.ndarray | None = None
    difficulty: np.ndarray | None = None

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float64)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 7)
        if boxes.ndim != 2 or boxes.shape[1] != 7:
            raise ValueError(f"boxes must have shape (M, 7), got {boxes.shape}")
        m = boxes.shape[0]
        names = np.asarray(self.names).astype(str).reshape(-1)
        if names.shape[0] != m:
            raise ValueError(f"names has {names.shape[0]} entries for {m} boxes")
        self.boxes = boxes
        self.names = names
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
            if self.scores.shape[0] != m:
                raise ValueError(
                    f"scores has {self.scores.shape[0]} entries for {m} boxes"
                )
        if self.num_points is not None:
            self.num_points = np.asarray(self.num_points, dtype=np.int64).reshape(-1)
            if self.num_points.shape[0] != m:
                raise ValueError(
                    f"num_points has {self.num_points.shape[0]} entries for {m} boxes"
                )
        if self.difficulty is not None:
            self.difficulty = np.asarray(self.difficulty, dtype=np.int64).reshape(-1)
            if self.difficulty.shape[0] != m:
                raise ValueError(
                    f"difficulty has {self.difficulty.shape[0]} entries for {m} boxes"
                )
            if np.any((self.difficulty < 0) | (self.difficulty > 2)):
                raise ValueError(
                    "difficulty must be 0 (unknown), 1 (LEVEL_1) or 2 (LEVEL_2)"
                )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def _as_boxes(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, 7)
    if arr.ndim != 2 or arr.shape[1] != 7:
        raise ValueError(f"{name} must have shape (N, 7), got {arr.shape}")
    return arr


def iou_3d(a, b) -> np.ndarray:
    """3-D IoU ``(N, M)`` (float64) of upright rotated boxes ``(N, 7)`` and ``(M, 7)``.

    BEV intersection (from :func:`gpicture.ops.rotated_iou`) times the z-overlap, over the
    union of the volumes; the degenerate-box rules of the official ``iou.cc`` apply.
    """
    a = _as_boxes(a, "a")
    b = _as_boxes(b, "b")
    n, m = a.shape[0], b.shape[0]
    if n == 0 or m == 0:
        return np.zeros((n, m), dtype=np.float64)
    bev = (
        rotated_iou(torch.from_numpy(a), torch.from_numpy(b))
        .cpu()
        .numpy()
        .astype(np.float64)
    )
    area_a = (a[:, 3] * a[:, 4])[:, None]
    area_b = (b[:, 3] * b[:, 4])[None, :]
    # bev = I / (A + B - I)  =>  I = bev (A + B) / (1 + bev)
    inter_bev = bev * (area_a + area_b) / (1.0 + bev)
    lo = np.maximum((a[:, 2] - a[:, 5] / 2)[:, None], (b[:, 2] - b[:, 5] / 2)[None, :])
    hi = np.minimum((a[:, 2] + a[:, 5] / 2)[:, None], (b[:, 2] + b[:, 5] / 2)[None, :])
    inter = inter_bev * np.clip(hi - lo, 0.0, None)
    vol_a = (a[:, 3] * a[:, 4] * a[:, 5])[:, None]
    vol_b = (b[:, 3] * b[:, 4] * b[:, 5])[None, :]
    union = vol_a + vol_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > _MIN_UNION, inter / union, 0.0)
    dims_a = a[:, 3:6]
    dims_b = b[:, 3:6]
    ok_a = np.all((dims_a > _MIN_BOX_DIM) & (dims_a < _MAX_BOX_DIM), axis=1)
    ok_b = np.all((dims_b > _MIN_BOX_DIM) & (dims_b < _MAX_BOX_DIM), axis=1)
    iou = np.where(ok_a[:, None] & ok_b[None, :], iou, 0.0)
    return np.clip(np.nan_to_num(iou, nan=0.0), 0.0, 1.0)


def _wrap_angle(x: np.ndarray) -> np.ndarray:
    """Angles wrapped into ``[-pi, pi)``."""
    return np.mod(x + np.pi, 2.0 * np.pi) - np.pi


def heading_accuracy(pred_heading, gt_heading) -> np.ndarray:
    """``1 - d / pi`` for the heading error ``d`` in ``[0, pi]`` (``ComputeHeadingAccuracy``)."""
    d = np.abs(
        _wrap_angle(np.asarray(pred_heading, np.float64))
        - _wrap_angle(np.asarray(gt_heading, np.float64))
    )
    d = np.where(d > np.pi, 2.0 * np.pi - d, d)
    return np.clip(1.0 - d / np.pi, 0.0, 1.0)


def gt_levels(gt: FrameBoxes) -> np.ndarray:
    """The detection level (1 or 2) of each GT box (see the module docstring)."""
    n = len(gt)
    labelled = gt.difficulty if gt.difficulty is not None else np.zeros(n, np.int64)
    if gt.num_points is not None:
        by_points = np.where(gt.num_points <= LEVEL2_MAX_POINTS, 2, 1)
    else:
        by_points = np.ones(n, np.int64)
    return np.where(labelled > 0, labelled, by_points).astype(np.int64)
