"""Waymo 3-D detection AP/APH: IoU, heading accuracy, the official AP integration and the
TP/FP/FN rules on hand-computed cases, and the fast matcher against a brute-force one."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from gpicture.eval.waymo_detection import (
    CLASSES,
    DEFAULT_SCORE_CUTOFFS,
    IOU_THRESHOLDS,
    FrameBoxes,
    average_precision,
    evaluate,
    gt_levels,
    heading_accuracy,
    iou_3d,
)

VEH, PED, CYC = CLASSES


def _box(x=0.0, y=0.0, z=0.0, l=4.0, w=2.0, h=2.0, heading=0.0):
    return [x, y, z, l, w, h, heading]


def _gt(boxes, names, num_points=None, difficulty=None):
    n = len(boxes)
    if num_points is None:
        num_points = [100] * n
    return FrameBoxes(
        np.array(boxes, float).reshape(-1, 7),
        np.array(names),
        None,
        num_points,
        difficulty,
    )


def _pd(boxes, names, scores):
    return FrameBoxes(
        np.array(boxes, float).reshape(-1, 7), np.array(names), np.array(scores, float)
    )


def _shift_for_iou(iou: float, length: float = 4.0) -> float:
    """x-shift of an identical upright box giving ``iou``: (l - d) / (l + d) = iou."""
    return length * (1.0 - iou) / (1.0 + iou)


# --------------------------------------------------------------------------- iou_3d


def test_iou_3d_hand_values():
    cube = _box(l=2, w=2, h=2)
    a = np.array([cube])
    b = np.array(
        [
            cube,  # identical: 1
            _box(x=1, l=2, w=2, h=2),  # half overlap along x: 4 / (8 + 8 - 4) = 1/3
            _box(z=0.5, l=2, w=2, h=1),  # inside, half the height: 4 / 8 = 1/2
            _box(z=1.5, l=2, w=2, h=2),  # z overlap 0.5: 2 / 14
            _box(z=3.0, l=2, w=2, h=2),  # z-disjoint: 0
            _box(l=2, w=2, h=2, heading=math.pi / 2),  # square turned 90 deg: 1
            _box(l=2, w=2, h=2, heading=math.pi / 4),  # octagon 8(sqrt2 - 1)
            _box(l=0.005, w=2, h=2),  # degenerate (<= 0.01): 0
        ]
    )
    octagon = 8 * (math.sqrt(2) - 1)
    want = [1.0, 1 / 3, 0.5, 2 / 14, 0.0, 1.0, octagon / (8 - octagon), 0.0]
    got = iou_3d(a, b)
    assert got.shape == (1, 8) and got.dtype == np.float64
    np.testing.assert_allclose(got[0], want, atol=1e-9)
    np.testing.assert_allclose(iou_3d(b, a)[:, 0], want, atol=1e-9)
    assert iou_3d(np.zeros((0, 7)), b).shape == (0, 8)
    assert iou_3d(a, np.zeros((0, 7))).shape == (1, 0)


def test_iou_3d_shifted_boxes_match_formula():
    for iou in (0.3, 0.5, 0.69, 0.71, 0.9):
        d = _shift_for_iou(iou)
        got = iou_3d(np.array([_box()]), np.array([_box(x=d)]))[0, 0]
        assert got == pytest.approx(iou, abs=1e-9)


# --------------------------------------------------------------------- heading, levels


def test_heading_accuracy():
    assert heading_accuracy(0.3, 0.3) == pytest.approx(1.0)
    assert heading_accuracy(math.pi / 2, 0.0) == pytest.approx(0.5)
    assert heading_accuracy(0.0, math.pi / 2) == pytest.approx(0.5)
    assert heading_accuracy(math.pi, 0.0) == pytest.approx(0.0)
    assert heading_accuracy(-math.pi, 0.0) == pytest.approx(0.0)
    # across the wrap: pi - 0.1 vs -pi + 0.1 is 0.2 apart
    assert heading_accuracy(math.pi - 0.1, -math.pi + 0.1) == pytest.approx(
        1 - 0.2 / math.pi
    )
    assert heading_accuracy(2 * math.pi + 0.25, 0.0) == pytest.approx(
        1 - 0.25 / math.pi
    )


def test_gt_levels():
    f = _gt(
        [_box()] * 5,
        [VEH] * 5,
        num_points=[3, 5, 6, 3, 100],
        difficulty=[0, 0, 0, 1, 2],
    )
    assert gt_levels(f).tolist() == [2, 2, 1, 1, 2]
    f = FrameBoxes(np.array([_box()]), np.array([VEH]))
    assert gt_levels(f).tolist() == [1]


# ----------------------------------------------------------------- AP integration


def test_average_precision_official_interpolation():
    # a single perfect operating point
    assert average_precision([1.0], [1.0]) == pytest.approx(1.0)
    # envelope 0.5 everywhere (the recall-0 point takes its neighbour's precision)
    assert average_precision([0.5, 1.0], [1.0, 0.0]) == pytest.approx(0.5)
    # recall only up to 0.5 at precision 1: nothing above it
    assert average_precision([1.0, 1.0], [0.5, 0.0]) == pytest.approx(0.5)
    # (r=1, p=2/3), (r=0.5, p=1): flat at 2/3 from 1 down to 0.55, trapezoid 0.55 -> 0.5,
    # then 1 down to 0.
    want = 0.45 * (2 / 3) + 0.05 * (2 / 3 + 1) / 2 + 0.5 * 1.0
    assert average_precision(
        [2 / 3, 0.5, 1.0, 1.0], [1.0, 0.5, 0.5, 0.0]
    ) == pytest.approx(want, abs=1e-12)
    # a gap narrower than delta is one trapezoid: (0.52, 0.5) -> (0.5, 1.0)
    want = 0.02 * (0.5 + 1.0) / 2 + 0.5
    assert average_precision([0.5, 1.0], [0.52, 0.5]) == pytest.approx(want, abs=1e-12)
    assert average_precision([], []) == 0.0
    assert average_precision([1.0], [0.0]) == 0.0


# --------------------------------------------------------------- evaluate: basics


def _scene():
    gt = {
        "f0": _gt(
            [
                _box(),
                _box(x=10),
                _box(x=20, l=0.8, w=0.8, h=1.8),
                _box(x=30, l=1.8, w=0.6, h=1.7),
                _box(x=40),
            ],
            [VEH, VEH, PED, CYC, "TYPE_SIGN"],
            num_points=[100, 3, 50, 2, 10],
        ),
        "f1": _gt(
            [_box(y=5, heading=0.4), _box(x=-8, l=0.9, w=0.9, h=1.7, heading=-2.0)],
            [VEH, PED],
            num_points=[200, 4],
            difficulty=[0, 1],
        ),
    }
    return gt


def test_gt_as_predictions_is_perfect():
    gt = _scene()
    pred = {k: _pd(v.boxes, v.names, np.ones(len(v))) for k, v in gt.items()}
    res = evaluate(gt, pred)
    for cls in CLASSES:
        for level in ("LEVEL_1", "LEVEL_2"):
            m = res[cls][level]
            if cls == CYC and level == "LEVEL_1":  # the only cyclist has 2 points
                assert math.isnan(m["AP"]) and math.isnan(m["APH"])
            else:
                assert m["AP"] == pytest.approx(1.0) and m["APH"] == pytest.approx(
                    1.0
                ), (cls, level)
    for key in ("mAP_L1", "mAPH_L1", "mAP_L2", "mAPH_L2"):
        assert res[key] == pytest.approx(1.0)


def test_class_without_gt_is_nan_and_left_out_of_means():
    gt = {"f": _gt([_box()], [VEH])}
    pred = {"f": _pd([_box(), _box(x=50, l=0.8, w=0.8)], [VEH, PED], [0.9, 0.9])}
    res = evaluate(gt, pred)
    assert res[VEH]["LEVEL_2"]["AP"] == pytest.approx(1.0)
    assert math.isnan(res[PED]["LEVEL_2"]["AP"]) and math.isnan(
        res[CYC]["LEVEL_1"]["APH"]
    )
    assert res["mAP_L1"] == pytest.approx(1.0) and res["mAP_L2"] == pytest.approx(1.0)
    empty = evaluate({}, {})
    assert math.isnan(empty["mAP_L2"])


def test_prediction_frames_not_in_gt_raise():
    gt = {"a": _gt([_box()], [VEH])}
    pred = {"a": _pd([_box()], [VEH], [1.0]), "zz_other": _pd([_box()], [VEH], [1.0])}
    with pytest.raises(ValueError, match="zz_other"):
        evaluate(gt, pred)


def test_gt_frame_without_predictions_counts_misses():
    gt = {"a": _gt([_box()], [VEH]), "b": _gt([_box()], [VEH])}
    pred = {"a": _pd([_box()], [VEH], [0.8])}
    res = evaluate(gt, pred)
    assert res[VEH]["LEVEL_2"]["AP"] == pytest.approx(0.5)


# ----------------------------------------------------- evaluate: hand-computed cases


def test_one_gt_tp_and_lower_scored_fp():
    # cutoffs <= 0.3: TP+FP (p 1/2, r 1); (0.3, 0.9]: TP (p 1, r 1); above: r 0.
    # Best precision at recall 1 is 1 -> AP 1.
    gt = {"f": _gt([_box()], [VEH])}
    pred = {"f": _pd([_box(), _box(x=20)], [VEH, VEH], [0.9, 0.3])}
    res = evaluate(gt, pred)
    assert res[VEH]["LEVEL_1"]["AP"] == pytest.approx(1.0)
    assert res[VEH]["LEVEL_2"]["APH"] == pytest.approx(1.0)


def test_one_gt_fp_scored_above_tp():
    # cutoffs <= 0.3: p 1/2, r 1; (0.3, 0.9]: only the FP, r 0 -> p set to 1; AP = 0.5.
    gt = {"f": _gt([_box()], [VEH])}
    pred = {"f": _pd([_box(), _box(x=20)], [VEH, VEH], [0.3, 0.9])}
    res = evaluate(gt, pred)
    assert res[VEH]["LEVEL_2"]["AP"] == pytest.approx(0.5)
    assert res[VEH]["LEVEL_2"]["APH"] == pytest.approx(0.5)


def test_tp_fp_tp_interpolation():
    # 2 GT; TP 0.9, FP 0.8, TP 0.7: (r 1, p 2/3), (r 1/2, p 1/2), (r 1/2, p 1).
    gt = {"f": _gt([_box(), _box(x=10)], [VEH, VEH])}
    pred = {"f": _pd([_box(), _box(x=30), _box(x=10)], [VEH] * 3, [0.9, 0.8, 0.7])}
    want = 0.5 * 1.0 + 0.45 * (2 / 3) + 0.05 * (1 + 2 / 3) / 2
    res = evaluate(gt, pred)
    assert res[VEH]["LEVEL_2"]["AP"] == pytest.approx(want, abs=1e-9)
    assert res[VEH]["LEVEL_1"]["AP"] == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("n_gt", [2, 4])
def test_miss_lowers_recall(n_gt):
    gt = {"f": _gt([_box(x=10 * i) for i in range(n_gt)], [VEH] * n_gt)}
    pred = {"f": _pd([_box()], [VEH], [0.9])}
    res = evaluate(gt, pred)
    assert res[VEH]["LEVEL_2"]["AP"] == pytest.approx(1 / n_gt)


def test_heading_half_pi_halves_aph():
    # a square footprint keeps IoU 1 when turned by pi/2
    sq = {"l": 2.0, "w": 2.0, "h": 2.0}
    gt = {"f": _gt([_box(**sq)], [VEH])}
    pred = {"f": _pd([_box(heading=math.pi / 2, **sq)], [VEH], [0.9])}
    res = evaluate(gt, pred)[VEH]["LEVEL_2"]
    assert res["AP"] == pytest.approx(1.0)
    assert res["APH"] == pytest.approx(0.5 * res["AP"])


def test_heading_pi_gives_zero_aph_but_counts_for_ap():
    gt = {"f": _gt([_box()], [VEH])}
    pred = {"f": _pd([_box(heading=math.pi)], [VEH], [0.9])}
    res = evaluate(gt, pred)[VEH]["LEVEL_2"]
    assert res["AP"] == pytest.approx(1.0)
    assert res["APH"] == pytest.approx(0.0)


def test_aph_mixes_heading_accuracies():
    sq = {"l": 2.0, "w": 2.0, "h": 2.0}
    gt = {"f": _gt([_box(**sq), _box(x=10, **sq)], [VEH, VEH])}
    pred = {
        "f": _pd(
            [_box(**sq), _box(x=10, heading=math.pi / 2, **sq)], [VEH, VEH], [1.0, 1.0]
        )
    }
    res = evaluate(gt, pred)[VEH]["LEVEL_2"]
    assert res["AP"] == pytest.approx(1.0)
    assert res["APH"] == pytest.approx(0.75)


# ------------------------------------------------------------------ difficulty levels


def test_few_point_gt_is_level2_and_its_match_is_no_fp_at_level1():
    # A: 100 points (LEVEL_1), B: 3 points (LEVEL_2).
    gt = {"f": _gt([_box(), _box(x=10)], [VEH, VEH], num_points=[100, 3])}
    # both found, the LEVEL_2 one with the higher score
    pred = {"f": _pd([_box(), _box(x=10)], [VEH, VEH], [0.5, 0.9])}
    res = evaluate(gt, pred)[VEH]
    assert res["LEVEL_2"]["AP"] == pytest.approx(1.0)
    # were the match to B a LEVEL_1 false positive, AP_L1 would be 0.5
    assert res["LEVEL_1"]["AP"] == pytest.approx(1.0)
    assert evaluate(gt, pred, level1_ignores_level2_matches=True)[VEH]["LEVEL_1"][
        "AP"
    ] == pytest.approx(1.0)


def test_level1_counting_of_level2_matches_official_vs_ignore():
    gt = {"f": _gt([_box(), _box(x=10)], [VEH, VEH], num_points=[100, 3])}
    pred = {"f": _pd([_box(x=10)], [VEH], [0.9])}  # only the LEVEL_2 box is found
    res = evaluate(gt, pred)[VEH]
    assert res["LEVEL_2"]["AP"] == pytest.approx(0.5)
    # official: the match is a TP at LEVEL_1 as well (r = 1 / (1 + 1 miss))
    assert res["LEVEL_1"]["AP"] == pytest.approx(0.5)
    # alternative: left out at LEVEL_1 -> recall 0 -> AP 0 (and still no FP)
    alt = evaluate(gt, pred, level1_ignores_level2_matches=True)[VEH]
    assert alt["LEVEL_1"]["AP"] == pytest.approx(0.0)
    assert alt["LEVEL_2"]["AP"] == pytest.approx(0.5)


def test_unmatched_level2_gt_is_no_miss_at_level1():
    gt = {"f": _gt([_box(), _box(x=10)], [VEH, VEH], num_points=[100, 3])}
    pred = {"f": _pd([_box()], [VEH], [0.9])}
    res = evaluate(gt, pred)[VEH]
    assert res["LEVEL_1"]["AP"] == pytest.approx(1.0)
    assert res["LEVEL_2"]["AP"] == pytest.approx(0.5)


def test_labelled_difficulty_overrides_points_and_empty_gt_dropped():
    gt = {
        "f": _gt(
            [_box(), _box(x=10), _box(x=20)],
            [VEH] * 3,
            num_points=[3, 100, 0],  # labelled L1 / labelled L2 / no points: dropped
            difficulty=[1, 2, 0],
        )
    }
    pred = {"f": _pd([_box(), _box(x=20)], [VEH, VEH], [0.5, 0.9])}
    res = evaluate(gt, pred)[VEH]
    # LEVEL_1: GT {0}; the box on the dropped GT (score 0.9) is an FP:
    # cutoffs <= 0.5: p 1/2, r 1; (0.5, 0.9]: r 0. -> AP 0.5
    assert res["LEVEL_1"]["AP"] == pytest.approx(0.5)
    # LEVEL_2: GT {0, 1}: r 1/2 at p 1/2 -> envelope 0.5 over [0, 0.5]
    assert res["LEVEL_2"]["AP"] == pytest.approx(0.25)


def test_class_with_only_level2_gt_is_nan_at_level1():
    gt = {"f": _gt([_box(), _box(x=10, l=0.8, w=0.8)], [VEH, PED], num_points=[100, 2])}
    pred = {"f": _pd([_box(), _box(x=10, l=0.8, w=0.8)], [VEH, PED], [0.9, 0.9])}
    res = evaluate(gt, pred)
    assert math.isnan(res[PED]["LEVEL_1"]["AP"])
    assert res[PED]["LEVEL_2"]["AP"] == pytest.approx(1.0)
    assert res["mAP_L1"] == pytest.approx(1.0)


# ---------------------------------------------------------------- IoU thresholds, matching


@pytest.mark.parametrize(
    "cls,iou,matched",
    [
        (VEH, 0.69, False),
        (VEH, 0.71, True),
        (PED, 0.49, False),
        (PED, 0.51, True),
        (CYC, 0.55, True),
    ],
)
def test_iou_threshold(cls, iou, matched):
    d = _shift_for_iou(iou)
    gt = {"f": _gt([_box()], [cls])}
    pred = {"f": _pd([_box(x=d)], [cls], [0.9])}
    res = evaluate(gt, pred)[cls]["LEVEL_2"]
    assert res["AP"] == pytest.approx(1.0 if matched else 0.0)
    assert IOU_THRESHOLDS[cls] == (0.7 if cls == VEH else 0.5)


def test_class_must_agree():
    gt = {"f": _gt([_box()], [VEH])}
    pred = {"f": _pd([_box()], [PED], [0.9])}
    res = evaluate(gt, pred)
    assert res[VEH]["LEVEL_2"]["AP"] == pytest.approx(0.0)
    assert math.isnan(res[PED]["LEVEL_2"]["AP"])


def test_hungarian_not_greedy_and_rematched_per_cutoff():
    # p1 (score 0.9): IoU 0.8 with g1, 0.75 with g2; p2 (score 0.8): IoU 0.75 with g1 only.
    # Hungarian with both: p1-g2 + p2-g1 (1.5 > 0.8) -> 2 TP; greedy by score would give
    # p1-g1 and an FP. With p1 alone (cutoffs in (0.8, 0.9]) p1 matches g1.
    a, b = _shift_for_iou(0.8), _shift_for_iou(0.75)
    g = [_box(), _box(x=a + b)]
    p = [_box(x=a), _box(x=-b)]
    ious = iou_3d(np.array(p), np.array(g))
    np.testing.assert_allclose(ious[0], [0.8, 0.75], atol=1e-9)
    assert ious[1, 0] == pytest.approx(0.75) and ious[1, 1] < 0.7
    res = evaluate({"f": _gt(g, [VEH, VEH])}, {"f": _pd(p, [VEH, VEH], [0.9, 0.8])})
    assert res[VEH]["LEVEL_2"]["AP"] == pytest.approx(1.0)


def test_score_cutoff_grid():
    assert len(DEFAULT_SCORE_CUTOFFS) == 101
    assert DEFAULT_SCORE_CUTOFFS[0] == 0.0 and DEFAULT_SCORE_CUTOFFS[-1] == 1.0
    # Operating points are the cutoffs, not the detections: an FP scored just below the TP
    # but in the same 0.01 bin is counted with it (AP 0.5, where ranking by score would give
    # 1); in the bin below it costs nothing.
    gt = {"f": _gt([_box()], [VEH])}
    pred = {"f": _pd([_box(), _box(x=20)], [VEH, VEH], [0.305, 0.301])}
    assert evaluate(gt, pred)[VEH]["LEVEL_2"]["AP"] == pytest.approx(0.5)
    pred = {"f": _pd([_box(), _box(x=20)], [VEH, VEH], [0.315, 0.301])}
    assert evaluate(gt, pred)[VEH]["LEVEL_2"]["AP"] == pytest.approx(1.0)
    # a custom grid with one cutoff at 0 is a single operating point
    pred = {"f": _pd([_box(), _box(x=20)], [VEH, VEH], [0.9, 0.1])}
    assert evaluate(gt, pred, score_cutoffs=[0.0])[VEH]["LEVEL_2"][
        "AP"
    ] == pytest.approx(0.5)


# ------------------------------------------------------- fast path vs brute force


def _brute(gt, pred, cutoffs=DEFAULT_SCORE_CUTOFFS, delta=0.05):
    """The official procedure spelt out: per cutoff, per frame, per class a full Hungarian."""
    out = {}
    for cls in CLASSES:
        thr = IOU_THRESHOLDS[cls]
        rows = {lv: [] for lv in ("LEVEL_1", "LEVEL_2")}
        n_gt = {"LEVEL_1": 0, "LEVEL_2": 0}
        for c in cutoffs:
            cnt = {lv: [0, 0, 0, 0.0] for lv in rows}  # tp, fp, fn, ha
            for fid, g in gt.items():
                gm = (g.names == cls) & (g.num_points > 0)
                gb, lv = g.boxes[gm], gt_levels(g)[gm]
                p = pred.get(fid)
                if p is None:
                    pb = np.zeros((0, 7))
                else:
                    pm = (p.names == cls) & (p.scores >= c)
                    pb = p.boxes[pm]
                matched_p, matched_g = [], []
                if len(pb) and len(gb):
                    iou = iou_3d(pb, gb)
                    w = np.where(iou >= thr, np.round(iou * 1e6), 0.0)
                    r, cc = linear_sum_assignment(w, maximize=True)
                    ok = iou[r, cc] >= thr
                    matched_p, matched_g = r[ok], cc[ok]
                for level, lmax in (("LEVEL_1", 1), ("LEVEL_2", 2)):
                    tp = len(matched_p)
                    ha = (
                        float(
                            heading_accuracy(pb[matched_p, 6], gb[matched_g, 6]).sum()
                        )
                        if tp
                        else 0.0
                    )
                    fn = (
                        int(np.sum(lv <= lmax)) - int(np.sum(lv[matched_g] <= lmax))
                        if len(gb)
                        else 0
                    )
                    cnt[level][0] += tp
                    cnt[level][1] += len(pb) - tp
                    cnt[level][2] += fn
                    cnt[level][3] += ha
            for level, series in rows.items():
                series.append(cnt[level])
        for fid, g in gt.items():
            gm = (g.names == cls) & (g.num_points > 0)
            lv = gt_levels(g)[gm]
            n_gt["LEVEL_1"] += int(np.sum(lv == 1))
            n_gt["LEVEL_2"] += int(lv.size)
        res = {}
        for level, series in rows.items():
            if n_gt[level] == 0:
                res[level] = {"AP": float("nan"), "APH": float("nan")}
                continue
            ps, phs, rs = [], [], []
            for tp, fp, fn, ha in series:
                p = tp / (tp + fp) if tp + fp else 0.0
                ph = ha / (tp + fp) if tp + fp else 0.0
                r = tp / (tp + fn) if tp + fn else 0.0
                if r == 0.0:
                    p = ph = 1.0
                ps.append(p)
                phs.append(ph)
                rs.append(r)
            res[level] = {
                "AP": average_precision(ps, rs, delta),
                "APH": average_precision(phs, rs, delta),
            }
        out[cls] = res
    return out


def _random_scene(rng, n_frames=16):
    gt, pred = {}, {}
    sizes = {VEH: (4.5, 2.0, 1.7), PED: (0.9, 0.9, 1.8), CYC: (1.8, 0.7, 1.7)}
    for f in range(n_frames):
        gb, gn, pts = [], [], []
        pb, pn, ps = [], [], []
        for _ in range(rng.integers(0, 8)):
            cls = CLASSES[rng.integers(0, 3)]
            l, w, h = sizes[cls]
            if gb and rng.random() < 0.35:
                # right next to the previous box (same class): predictions can then match
                # either, so the matching has several GT boxes to choose between
                cls = gn[-1]
                l, w, h = sizes[cls]
                x, y = np.array(gb[-1][:2]) + rng.normal(0, 0.12 * l, size=2)
                hd = gb[-1][6]
            else:
                x, y = rng.uniform(-4, 4, size=2)
                hd = rng.uniform(-math.pi, math.pi)
            gb.append([x, y, 0.0, l, w, h, hd])
            gn.append(cls)
            pts.append(int(rng.choice([0, 2, 5, 6, 50])))
            for _ in range(rng.integers(0, 4)):
                jit = rng.normal(0, [0.12, 0.12, 0.05, 0.05, 0.03, 0.03, 0.1])
                flip = math.pi * rng.choice([0.0, 0.5, 1.0], p=[0.7, 0.15, 0.15])
                pb.append(np.array([x, y, 0.0, l, w, h, hd + flip]) + jit)
                pn.append(cls if rng.random() > 0.1 else CLASSES[rng.integers(0, 3)])
                ps.append(
                    float(rng.choice([rng.random(), round(rng.random(), 2), 1.0]))
                )
        for _ in range(rng.integers(0, 3)):  # clutter
            cls = CLASSES[rng.integers(0, 3)]
            l, w, h = sizes[cls]
            pb.append([*rng.uniform(-8, 8, size=2), 0.0, l, w, h, rng.uniform(-3, 3)])
            pn.append(cls)
            ps.append(float(rng.random()))
        gt[f"frame{f}"] = _gt(
            np.array(gb).reshape(-1, 7), np.array(gn, dtype=str), num_points=pts
        )
        if f % 5 != 4:  # some frames have no predictions entry
            pred[f"frame{f}"] = _pd(
                np.array(pb).reshape(-1, 7), np.array(pn, dtype=str), ps
            )
    return gt, pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    gt, pred = _random_scene(rng)
    fast = evaluate(gt, pred)
    ref = _brute(gt, pred)
    for cls in CLASSES:
        for level in ("LEVEL_1", "LEVEL_2"):
            for k in ("AP", "APH"):
                a, b = fast[cls][level][k], ref[cls][level][k]
                assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(
                    b, abs=1e-9
                ), (cls, level, k)
