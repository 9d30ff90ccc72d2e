"""Waymo Open Dataset 3-D detection metrics: AP and APH at LEVEL_1 and LEVEL_2.

An independent re-implementation of the official metric (``waymo-open-dataset``,
``waymo_open_dataset/metrics/{detection_metrics,metrics_utils,matcher,iou}.cc`` and the
configuration of ``metrics/tools/compute_detection_metrics_main.cc``), checked against that
source. The rules, as the official code applies them:

Boxes and IoU
    Boxes are ``x, y, z, l, w, h, heading`` (vehicle frame; ``l`` along the heading, ``z`` the
    box centre). The IoU is the 3-D IoU of upright rotated boxes: BEV intersection area times
    the overlap of the z ranges, over the union of the volumes (:func:`iou_3d`). As in
    ``iou.cc``, a box with a dimension ``<= 0.01`` has IoU 0 with everything, a union volume
    ``<= 1e-6`` gives 0, and the value is clipped to ``[0, 1]``. A prediction and a ground
    truth (GT) of different classes have IoU 0.

Classes and thresholds
    ``TYPE_VEHICLE`` 0.7, ``TYPE_PEDESTRIAN`` 0.5, ``TYPE_CYCLIST`` 0.5. A pair can match when
    ``IoU >= threshold`` (``Matcher::CanMatch`` rejects ``iou < threshold``). Boxes of any
    other name (``TYPE_SIGN``, ...) are left out, GT and predictions alike.

Difficulty
    A GT box with ``num_points == 0`` is dropped (the official tool skips GT boxes with no
    lidar point). A GT's level is its ``difficulty`` when that is 1 or 2; when it is 0
    (unknown) or not given, the box is LEVEL_2 if it has ``<= 5`` lidar points and LEVEL_1
    otherwise; with neither ``difficulty`` nor ``num_points`` given it is LEVEL_1.

Score cutoffs and matching
    The precision/recall curve is sampled at score cutoffs, not at every detection: for each
    cutoff ``c`` of :data:`DEFAULT_SCORE_CUTOFFS` (``0.00, 0.01, ..., 0.99, 1.00``, the
    official configuration) the predictions with ``score >= c`` are matched, per frame and per
    class, to all the GT boxes of that class by the Hungarian algorithm, maximising the sum of
    the (quantised, ``round(iou * 1e6)``) IoUs of the pairs that can match; the matching is
    redone at each cutoff (a prediction's partner can change when higher-scored predictions
    drop out). One matching serves both levels.

TP / FP / FN at a level (``ComputeDetectionMeasurementFromMatchingResult``)
    * TP: every matched prediction, whatever the level of its GT. The official code checks no
      difficulty here, so at LEVEL_1 a prediction matched to a LEVEL_2 GT is a *true
      positive* (it is neither ignored nor a false positive) and it counts in the recall's
      numerator too. ``evaluate(..., level1_ignores_level2_matches=True)`` gives the
      alternative reading (such predictions are left out at LEVEL_1: no TP, no FP).
    * FP: every unmatched prediction (the same at both levels; the no-label-zone exemption of
      the official code needs NLZ polygons, which these inputs do not carry).
    * FN: an unmatched GT whose level is ``<=`` the level evaluated (LEVEL_2 GT boxes are not
      missed at LEVEL_1).
    Counts are summed over frames, then per cutoff ``precision = TP / (TP + FP)`` (0 when
    there are no predictions), ``precision_H = sum(heading accuracy of the TPs) / (TP + FP)``,
    ``recall = TP / (TP + FN)`` (0 when the sum is 0), and where ``recall == 0`` both
    precisions are set to 1.

Heading accuracy (APH)
    ``1 - d / pi`` with ``d`` the absolute heading difference brought into ``[0, pi]`` (both
    headings are wrapped into ``[-pi, pi)``, ``d = |a - b|``, ``d = 2 pi - d`` if ``d > pi``),
    clipped to ``[0, 1]``: 1 for a perfect heading, 0.5 at ``pi/2``, 0 for a flipped box
    (which is still a TP for AP: ``min_heading_accuracy`` defaults to -1).

AP (``ComputeMeanAveragePrecision``, ``desired_recall_delta = 0.05``)
    The (recall, precision) points of all the cutoffs plus ``(0, 1)`` are reduced to the
    highest precision per recall. Walking from the highest recall down, the precision is the
    running maximum (the envelope: the best precision at recall ``>= r``); wherever two
    consecutive recalls are more than ``delta`` (+1e-6) apart, points are inserted every
    ``delta`` below the higher one carrying the envelope value of the higher side. The
    precision at recall 0 is replaced by that of the next point, and the AP is the
    trapezoidal area under these points. Nothing is credited above the highest recall
    reached. (So a gap narrower than ``delta`` is a trapezoid between the two envelope
    values, a wider one is flat at the higher-recall precision but for its last sliver; for
    small gaps this is close to, not equal to, the all-points "max precision at recall >= r"
    step area. See :func:`average_precision`.) APH is the same with ``precision_H``.

Output
    ``evaluate`` returns ``{class: {"LEVEL_1": {"AP", "APH"}, "LEVEL_2": {...}}}`` for each of
    :data:`CLASSES` plus ``mAP_L1``, ``mAPH_L1``, ``mAP_L2``, ``mAPH_L2``. A class with no GT
    box at a level (after dropping the empty boxes) gets NaN there, and the means are over
    the classes with a value (NaN when none has one). The official code would report a
    number even then; here no GT means no score.

Frames
    Keys are frame ids. A frame of ``gt`` missing from ``pred`` has no predictions (its GT
    boxes are misses); a frame of ``pred`` missing from ``gt`` raises ValueError (a
    predictions file for other frames).

Numerics are float64 (the official code runs in float32, so values on a threshold or a score
cutoff can fall the other way); ties between equally good Hungarian assignments may be broken
differently.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from gpicture.eval.waymo_boxes import (
    CLASSES,
    IOU_THRESHOLDS,
    LEVEL2_MAX_POINTS,
    FrameBoxes,
    gt_levels,
    heading_accuracy,
    iou_3d,
)

__all__ = [
    "CLASSES",
    "DEFAULT_RECALL_DELTA",
    "DEFAULT_SCORE_CUTOFFS",
    "IOU_THRESHOLDS",
    "LEVEL2_MAX_POINTS",
    "FrameBoxes",
    "average_precision",
    "evaluate",
    "gt_levels",
    "heading_accuracy",
    "iou_3d",
]

DEFAULT_SCORE_CUTOFFS: tuple[float, ...] = tuple([i * 0.01 for i in range(100)] + [1.0])
DEFAULT_RECALL_DELTA = 0.05  # Config.desired_recall_delta default

_LEVELS = ("LEVEL_1", "LEVEL_2")
_MAX_IOU_QUANT = 1_000_000  # iou.cc kMaxIoU
_RECALL_TOL = 1e-6  # ComputeMeanAveragePrecision kError


def average_precision(
    precisions, recalls, recall_delta: float = DEFAULT_RECALL_DELTA
) -> float:
    """Area under a sampled precision/recall curve, as ``ComputeMeanAveragePrecision``.

    ``precisions[i], recalls[i]`` is one operating point (one score cutoff). The points and
    ``(recall 0, precision 1)`` are reduced to the best precision per recall; from the highest
    recall down the precision is the running maximum, and gaps wider than ``recall_delta``
    get points every ``recall_delta`` carrying the higher side's value; the recall-0 point
    takes the precision of its neighbour; the result is the trapezoidal area.
    """
    precisions = [float(p) for p in np.asarray(precisions, np.float64).reshape(-1)]
    recalls = [float(r) for r in np.asarray(recalls, np.float64).reshape(-1)]
    if len(precisions) != len(recalls):
        raise ValueError("precisions and recalls differ in length")
    if not 0.0 < recall_delta <= 1.0:
        raise ValueError("recall_delta must be in (0, 1]")
    if not precisions:
        return 0.0
    best: dict[float, float] = {0.0: 1.0}
    for p, r in zip(precisions, recalls):
        best[r] = max(best.get(r, 0.0), p)
    items = sorted(best.items())
    curve: list[tuple[float, float]] = []  # (precision, recall), recall descending
    last_recall = items[0][0]
    max_precision = 0.0
    for r, p in reversed(items):
        while last_recall - r > recall_delta + _RECALL_TOL:
            last_recall -= recall_delta
            curve.append((max_precision, last_recall))
        max_precision = max(p, max_precision)
        curve.append((max_precision, r))
        last_recall = r
    if len(curve) >= 2:
        curve[-1] = (curve[-2][0], curve[-1][1])
    area = 0.0
    for (p0, r0), (p1, r1) in itertools.pairwise(curve):
        area += 0.5 * (r0 - r1) * (p0 + p1)
    return float(area)


class _Accumulator:
    """Per-class counts over score cutoffs, kept as difference arrays (index = cutoff)."""

    def __init__(self, n_cutoffs: int) -> None:
        k = n_cutoffs + 1
        c = len(CLASSES)
        self.n_cutoffs = n_cutoffs
        self.n_pred = np.zeros((c, k), np.int64)
        self.tp = np.zeros((c, k), np.int64)  # matched pairs, any GT level
        self.tp_l1 = np.zeros((c, k), np.int64)  # matched pairs whose GT is LEVEL_1
        self.ha = np.zeros((c, k), np.float64)
        self.ha_l1 = np.zeros((c, k), np.float64)
        self.n_gt = np.zeros(c, np.int64)
        self.n_gt_l1 = np.zeros(c, np.int64)

    def add_matches(self, cls, upto, is_l1, ha, start=None) -> None:
        """Matches of classes ``cls`` holding at cutoffs ``[start, upto)`` (start 0 by default)."""
        cls = np.asarray(cls, np.int64)
        upto = np.asarray(upto, np.int64)
        start = np.zeros_like(upto) if start is None else np.asarray(start, np.int64)
        is_l1 = np.asarray(is_l1, bool)
        ha = np.asarray(ha, np.float64)
        for arr, val in ((self.tp, 1), (self.tp_l1, is_l1.astype(np.int64))):
            np.add.at(arr, (cls, start), val)
            np.add.at(arr, (cls, upto), -np.asarray(val))
        for arr, val in ((self.ha, ha), (self.ha_l1, np.where(is_l1, ha, 0.0))):
            np.add.at(arr, (cls, start), val)
            np.add.at(arr, (cls, upto), -val)

    def totals(self, arr: np.ndarray) -> np.ndarray:
        return np.cumsum(arr, axis=1)[:, : self.n_cutoffs]


def _class_index(names: np.ndarray) -> np.ndarray:
    idx = np.full(names.shape[0], -1, np.int64)
    for i, c in enumerate(CLASSES):
        idx[names == c] = i
    return idx


_THRESHOLDS = np.array([IOU_THRESHOLDS[c] for c in CLASSES], np.float64)


def _accumulate_frame(
    gt: FrameBoxes, pred: FrameBoxes | None, cutoffs: np.ndarray, acc: _Accumulator
) -> None:
    g_cls = _class_index(gt.names)
    g_keep = g_cls >= 0
    if gt.num_points is not None:
        g_keep &= gt.num_points > 0
    g_idx = np.flatnonzero(g_keep)
    g_cls = g_cls[g_idx]
    g_l1 = gt_levels(gt)[g_idx] == 1
    np.add.at(acc.n_gt, g_cls, 1)
    np.add.at(acc.n_gt_l1, g_cls, g_l1.astype(np.int64))

    if pred is None or len(pred) == 0:
        return
    if pred.scores is None:
        raise ValueError("predictions need scores")
    p_cls = _class_index(pred.names)
    # K[i]: number of cutoffs <= score, the prediction takes part at cutoff indices [0, K).
    p_k = np.searchsorted(cutoffs, pred.scores, side="right")
    p_idx = np.flatnonzero((p_cls >= 0) & (p_k > 0))
    p_cls = p_cls[p_idx]
    p_k = p_k[p_idx]
    np.add.at(acc.n_pred, (p_cls, np.zeros_like(p_k)), 1)
    np.add.at(acc.n_pred, (p_cls, p_k), -1)
    if p_idx.size == 0 or g_idx.size == 0:
        return

    p_boxes = pred.boxes[p_idx]
    g_boxes = gt.boxes[g_idx]
    iou = iou_3d(p_boxes, g_boxes)
    edge = (p_cls[:, None] == g_cls[None, :]) & (iou >= _THRESHOLDS[p_cls][:, None])
    rows = np.flatnonzero(edge.any(axis=1))
    if rows.size == 0:
        return
    cols = np.flatnonzero(edge.any(axis=0))
    sub = edge[np.ix_(rows, cols)]
    ha_full = heading_accuracy(p_boxes[:, 6][:, None], g_boxes[:, 6][None, :])

    # One-to-one pairs (the prediction's only candidate GT has no other candidate): matched
    # at every cutoff the prediction takes part in.
    row_deg = sub.sum(axis=1)
    col_deg = sub.sum(axis=0)
    r_single, c_single = np.nonzero(
        sub & (row_deg[:, None] == 1) & (col_deg[None, :] == 1)
    )
    if r_single.size:
        pi, gj = rows[r_single], cols[c_single]
        acc.add_matches(p_cls[pi], p_k[pi], g_l1[gj], ha_full[pi, gj])

    rest_r = np.flatnonzero(~np.isin(np.arange(rows.size), r_single))
    if rest_r.size == 0:
        return
    rest_c = np.flatnonzero(~np.isin(np.arange(cols.size), c_single))
    sub2 = sub[np.ix_(rest_r, rest_c)]
    rows2, cols2 = rows[rest_r], cols[rest_c]
    nr, nc = rows2.size, cols2.size
    r_e, c_e = np.nonzero(sub2)
    graph = coo_matrix((np.ones(r_e.size), (r_e, nr + c_e)), shape=(nr + nc, nr + nc))
    n_comp, labels = connected_components(graph, directed=False)
    weights_full = np.where(edge, np.round(iou * _MAX_IOU_QUANT), 0.0)
    for comp in range(n_comp):
        pi = rows2[labels[:nr] == comp]
        gj = cols2[labels[nr:] == comp]
        w = weights_full[np.ix_(pi, gj)]
        e = edge[np.ix_(pi, gj)]
        k_vals = np.unique(p_k[pi])[::-1]  # descending
        cls = p_cls[pi[0]]
        for j, hi in enumerate(k_vals):
            lo = k_vals[j + 1] if j + 1 < k_vals.size else 0
            active = np.flatnonzero(p_k[pi] >= hi)
            r, c = linear_sum_assignment(w[active], maximize=True)
            ok = e[active[r], c]
            r, c = active[r[ok]], c[ok]
            if r.size == 0:
                continue
            m_p, m_g = pi[r], gj[c]
            acc.add_matches(
                np.full(r.size, cls),
                np.full(r.size, hi),
                g_l1[m_g],
                ha_full[m_p, m_g],
                start=np.full(r.size, lo),
            )


def _level_metrics(tp, fp, fn, ha, recall_delta: float) -> dict[str, float]:
    tp = tp.astype(np.float64)
    fp = fp.astype(np.float64)
    fn = fn.astype(np.float64)
    det = tp + fp
    pos = tp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(det > 0, tp / det, 0.0)
        precision_h = np.where(det > 0, ha / det, 0.0)
        recall = np.where(pos > 0, tp / pos, 0.0)
    precision = np.where(recall == 0.0, 1.0, precision)
    precision_h = np.where(recall == 0.0, 1.0, precision_h)
    return {
        "AP": average_precision(precision, recall, recall_delta),
        "APH": average_precision(precision_h, recall, recall_delta),
    }


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def evaluate(
    gt: Mapping[str, FrameBoxes],
    pred: Mapping[str, FrameBoxes],
    *,
    score_cutoffs: Sequence[float] = DEFAULT_SCORE_CUTOFFS,
    recall_delta: float = DEFAULT_RECALL_DELTA,
    level1_ignores_level2_matches: bool = False,
) -> dict:
    """AP / APH per class at LEVEL_1 and LEVEL_2, and their means (module docstring).

    ``gt`` and ``pred`` map frame ids to :class:`FrameBoxes`. ``level1_ignores_level2_matches``
    switches LEVEL_1 from the official counting (a prediction matched to a LEVEL_2 GT is a
    TP) to leaving such predictions out of LEVEL_1 altogether.
    """
    extra = [k for k in pred if k not in gt]
    if extra:
        shown = ", ".join(repr(k) for k in sorted(map(str, extra))[:5])
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        raise ValueError(
            f"{len(extra)} prediction frame(s) not in the ground truth: {shown}{more} "
            "(predictions for other frames?)"
        )
    cutoffs = np.asarray(sorted(float(c) for c in score_cutoffs), np.float64)
    if cutoffs.size == 0:
        raise ValueError("score_cutoffs is empty")
    acc = _Accumulator(cutoffs.size)
    for frame_id, gt_frame in gt.items():
        _accumulate_frame(gt_frame, pred.get(frame_id), cutoffs, acc)

    n_pred = acc.totals(acc.n_pred)
    tp_all = acc.totals(acc.tp)
    tp_l1 = acc.totals(acc.tp_l1)
    ha_all = acc.totals(acc.ha)
    ha_l1 = acc.totals(acc.ha_l1)

    out: dict = {}
    per_level: dict[str, dict[str, list[float]]] = {
        lv: {"AP": [], "APH": []} for lv in _LEVELS
    }
    for ci, name in enumerate(CLASSES):
        res = {}
        fp = n_pred[ci] - tp_all[ci]
        for level in _LEVELS:
            if level == "LEVEL_2":
                n_gt, tp, ha, fn = (
                    acc.n_gt[ci],
                    tp_all[ci],
                    ha_all[ci],
                    acc.n_gt[ci] - tp_all[ci],
                )
            else:
                n_gt, fn = acc.n_gt_l1[ci], acc.n_gt_l1[ci] - tp_l1[ci]
                if level1_ignores_level2_matches:
                    tp, ha = tp_l1[ci], ha_l1[ci]
                else:
                    tp, ha = tp_all[ci], ha_all[ci]
            if n_gt == 0:
                m = {"AP": float("nan"), "APH": float("nan")}
            else:
                m = _level_metrics(tp, fp, fn, ha, recall_delta)
            res[level] = m
            per_level[level]["AP"].append(m["AP"])
            per_level[level]["APH"].append(m["APH"])
        out[name] = res
    for level, suffix in (("LEVEL_1", "L1"), ("LEVEL_2", "L2")):
        out[f"mAP_{suffix}"] = _nanmean(per_level[level]["AP"])
        out[f"mAPH_{suffix}"] = _nanmean(per_level[level]["APH"])
    return out
