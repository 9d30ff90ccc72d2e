"""Rotated BEV IoU and NMS: the reference against hand-computed areas and an
independent polygon clipper, the native ops against the reference."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch

from gpicture.ops import nms_reference, nms_rotated, rotated_iou, rotated_iou_reference
from gpicture.ops.native import load_native

SQRT2 = math.sqrt(2.0)


def _t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def _iou1(a, b) -> float:
    return float(rotated_iou_reference(_t(a), _t(b))[0, 0])


def _module():
    # `gpicture.ops.rotated_iou` the attribute is the function re-exported by the package.
    return importlib.import_module("gpicture.ops.rotated_iou")


def _native():
    native = load_native()
    if native is None or not hasattr(native, "rotated_iou"):
        pytest.fail("gpicture._native lacks the rotated IoU ops: rebuild csrc/")
    return native


def _random_boxes(n: int, gen: torch.Generator, extent: float = 10.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * extent
    dims = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 4 + 0.05
    heading = (torch.rand(n, 1, generator=gen, dtype=torch.float64) - 0.5) * 4 * math.pi
    return torch.cat([xy, dims, heading], dim=1)


def _rotate_scene(boxes: torch.Tensor, phi: float) -> torch.Tensor:
    """The same boxes in a frame rotated by ``phi`` about the origin (IoU is invariant)."""
    c, s = math.cos(phi), math.sin(phi)
    out = boxes.clone()
    out[:, 0] = c * boxes[:, 0] - s * boxes[:, 1]
    out[:, 1] = s * boxes[:, 0] + c * boxes[:, 1]
    out[:, 4] = boxes[:, 4] + phi
    return out


# --------------------------------------------------------------------------- hand cases

HAND_CASES = [
    # (a, b, IoU)
    ([0, 0, 2, 2, 0], [1, 0, 2, 2, 0], 2 / 6),  # half overlap, collinear edges
    ([0, 0, 2, 2, 0], [1, 1, 2, 2, 0], 1 / 7),  # quarter overlap
    ([0, 0, 4, 2, 0], [0, 0, 4, 2, math.pi / 2], 4 / 12),  # cross: 2x2 inter
    ([0, 0, 2, 2, 0], [0, 0, 2, 2, math.pi / 4], 1 / SQRT2),  # octagon: 8*sqrt2 - 8
    ([0, 0, 2, 2, 0], [0, 0, 2, 2, 0], 1.0),  # identical
    ([3, -1, 4, 1.5, 0.7], [3, -1, 4, 1.5, 0.7], 1.0),  # identical, rotated
    (
        [3, -1, 4, 1.5, 0.7],
        [3, -1, 4, 1.5, 0.7 + math.pi],
        1.0,
    ),  # same footprint, heading + pi
    (
        [3, -1, 4, 1.5, 0.7],
        [3, -1, 1.5, 4, 0.7 + math.pi / 2],
        1.0,
    ),  # dims swapped, heading + pi/2
    ([0, 0, 2, 2, 0], [5, 5, 1, 1, 0.3], 0.0),  # disjoint
    ([0, 0, 4, 4, 0.3], [0.2, 0.1, 1, 2, 1.1], 2 / 16),  # contained: area ratio
    ([0, 0, 1, 2, 1.1], [0, 0, 4, 4, 0.3], 2 / 16),  # container second
    ([0, 0, 2, 2, 0], [2, 0, 2, 2, 0], 0.0),  # touching edges
    ([0, 0, 2, 2, 0], [2, 2, 2, 2, 0], 0.0),  # touching corners
    ([0, 0, 2, 2, 0], [2, 0.5, 2, 1, 0], 0.0),  # touching, partial edge
    ([0, 0, 2, 1, 0], [1, 0, 2, 1, 0], 1 / 3),  # shared supporting lines
    (
        [0, 0, 2, 2, 0],
        [1, 0, 2, 2, math.pi / 4],
        None,
    ),  # checked against the clipper below
    ([0, 0, 0, 2, 0], [0, 0, 2, 2, 0], 0.0),  # zero dx
    ([0, 0, 2, 0, 0], [0, 0, 2, 2, 0], 0.0),  # zero dy
    ([0, 0, 0, 0, 0], [0, 0, 0, 0, 0], 0.0),  # both zero: union 0
    ([0, 0, -2, 2, 0], [0, 0, 2, 2, 0], 0.0),  # negative dx
    ([0, 0, 2, -1, 0.4], [0, 0, 2, -1, 0.4], 0.0),  # negative dy, identical
]


@pytest.mark.parametrize("a,b,expected", [c for c in HAND_CASES if c[2] is not None])
def test_reference_hand_cases(a, b, expected) -> None:
    got = _iou1(a, b)
    assert math.isfinite(got)
    assert got == pytest.approx(expected, abs=1e-9)
    # Symmetric, and invariant to a rotation and translation of the whole scene.
    assert _iou1(b, a) == pytest.approx(expected, abs=1e-9)
    scene = _rotate_scene(_t(a, b), 0.83)
    scene[:, :2] += torch.tensor([120.0, -45.0], dtype=torch.float64)
    moved = rotated_iou_reference(scene[:1], scene[1:])
    assert float(moved) == pytest.approx(expected, abs=1e-9)


def test_reference_touching_rotated_boxes() -> None:
    for heading in [0.1, 0.7, 1.3, 2.9]:
        c, s = math.cos(heading), math.sin(heading)
        a = [0, 0, 2, 1, heading]
        # Neighbour along the heading (shared edge) and across it.
        along = [3 * c, 3 * s, 4, 1, heading]
        across = [-1.5 * s, 1.5 * c, 2, 2, heading]
        assert _iou1(a, along) == pytest.approx(0.0, abs=1e-9)
        assert _iou1(a, across) == pytest.approx(0.0, abs=1e-9)
        # Collinear edges, overlapping by half: inter 1 x 1, union 3.
        half = [c, s, 2, 1, heading]
        assert _iou1(a, half) == pytest.approx(1 / 3, abs=1e-9)


def test_reference_seven_column_convention() -> None:
    gen = torch.Generator().manual_seed(7)
    a5, b5 = _random_boxes(30, gen), _random_boxes(20, gen)
    a7 = torch.stack(
        [
            a5[:, 0],
            a5[:, 1],
            torch.rand(30, dtype=torch.float64, generator=gen),
            a5[:, 2],
            a5[:, 3],
            torch.rand(30, dtype=torch.float64, generator=gen) * 3,
            a5[:, 4],
        ],
        dim=1,
    )
    expected = rotated_iou_reference(a5, b5)
    assert torch.equal(rotated_iou_reference(a7, b5), expected)
    assert torch.allclose(rotated_iou(a7, b5), expected, atol=1e-12)
    scores = torch.rand(30, generator=gen)
    assert torch.equal(nms_reference(a7, scores, 0.2), nms_reference(a5, scores, 0.2))
    assert torch.equal(nms_rotated(a7, scores, 0.2), nms_reference(a5, scores, 0.2))


def test_reference_shapes_and_dtypes() -> None:
    gen = torch.Generator().manual_seed(1)
    a = _random_boxes(4, gen).float()
    assert rotated_iou_reference(a, a).dtype == torch.float32
    assert rotated_iou(a, a).dtype == torch.float32
    assert rotated_iou_reference(a, a.double()).dtype == torch.float64
    assert rotated_iou_reference(a[:0], a).shape == (0, 4)
    assert rotated_iou(a, a[:0]).shape == (4, 0)
    assert nms_reference(a[:0], torch.zeros(0), 0.5).tolist() == []
    assert nms_rotated(a[:0], torch.zeros(0), 0.5).tolist() == []
    with pytest.raises(ValueError, match=r"\(N, 5\) or \(N, 7\)"):
        rotated_iou_reference(torch.zeros(3, 6), a)
    with pytest.raises(RuntimeError, match=r"\(N, 5\) or \(N, 7\)"):
        _native().rotated_iou(torch.zeros(3, 6), a)


# ------------------------------------------------- reference vs an independent clipper


def _corners_np(box) -> np.ndarray:
    x, y, dx, dy, h = (float(v) for v in box)
    c, s = math.cos(h), math.sin(h)
    local = np.array([[dx, dy], [-dx, dy], [-dx, -dy], [dx, -dy]]) / 2
    rot = np.array([[c, -s], [s, c]])
    return local @ rot.T + np.array([x, y])


def _clip_np(subject: list, clip: np.ndarray) -> list:
    """Sutherland-Hodgman: ``subject`` polygon clipped by the CCW convex polygon ``clip``."""

    def side(p, q, z) -> float:  # > 0: z left of p -> q
        return (q[0] - p[0]) * (z[1] - p[1]) - (q[1] - p[1]) * (z[0] - p[0])

    out = subject
    for k in range(len(clip)):
        p, q = clip[k], clip[(k + 1) % len(clip)]
        pts, out = out, []
        for i in range(len(pts)):
            cur, nxt = pts[i], pts[(i + 1) % len(pts)]
            sc, sn = side(p, q, cur), side(p, q, nxt)
            if sc >= 0:
                out.append(cur)
            if (sc >= 0) != (sn >= 0):
                out.append(cur + (nxt - cur) * (sc / (sc - sn)))
        if not out:
            return []
    return out


def _iou_np(a, b) -> float:
    area_a = max(float(a[2]), 0) * max(float(a[3]), 0)
    area_b = max(float(b[2]), 0) * max(float(b[3]), 0)
    if area_a <= 0 or area_b <= 0:
        return 0.0
    poly = _clip_np(list(_corners_np(a)), _corners_np(b))
    inter = 0.0
    for i in range(len(poly)):
        x0, y0 = poly[i]
        x1, y1 = poly[(i + 1) % len(poly)]
        inter += x0 * y1 - x1 * y0
    inter = abs(inter) / 2
    return inter / (area_a + area_b - inter)


def test_reference_matches_independent_clipper() -> None:
    gen = torch.Generator().manual_seed(3)
    a = _random_boxes(200, gen, extent=4.0)
    b = _random_boxes(200, gen, extent=4.0)
    got = torch.diagonal(rotated_iou_reference(a, b))
    expected = torch.tensor(
        [_iou_np(a[i], b[i]) for i in range(200)], dtype=torch.float64
    )
    assert (expected > 0).sum() > 60  # the boxes overlap often enough to test something
    assert torch.allclose(got, expected, atol=1e-9)
    # The 45-degree-shifted hand case.
    a1, b1 = [0, 0, 2, 2, 0], [1, 0, 2, 2, math.pi / 4]
    assert _iou1(a1, b1) == pytest.approx(_iou_np(a1, b1), abs=1e-12)


def test_reference_matches_sampled_area() -> None:
    """Overlap estimated on a fine grid of points (no polygon code at all)."""
    gen = torch.Generator().manual_seed(11)
    a = _random_boxes(3, gen, extent=1.0)
    b = _random_boxes(3, gen, extent=1.0)
    side = torch.linspace(-4, 6, 1001, dtype=torch.float64)
    gx, gy = torch.meshgrid(side, side, indexing="xy")
    cell = float(side[1] - side[0]) ** 2

    def inside(box):
        x, y, dx, dy, h = box.tolist()
        u = (gx - x) * math.cos(h) + (gy - y) * math.sin(h)
        v = -(gx - x) * math.sin(h) + (gy - y) * math.cos(h)
        return (u.abs() <= dx / 2) & (v.abs() <= dy / 2)

    got = torch.diagonal(rotated_iou_reference(a, b))
    for i in range(3):
        ia, ib = inside(a[i]), inside(b[i])
        inter = (ia & ib).sum().item() * cell
        union = float(a[i, 2] * a[i, 3] + b[i, 2] * b[i, 3]) - inter
        assert float(got[i]) == pytest.approx(inter / union, abs=0.01)


# ---------------------------------------------------------------- native vs reference


def _hard_pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` pairs of boxes, a third of them generic, the rest degenerate on purpose."""
    gen = torch.Generator().manual_seed(seed)
    a = _random_boxes(n, gen, extent=3.0)
    b = _random_boxes(n, gen, extent=3.0)
    kind = torch.randint(0, 12, (n,), generator=gen)
    c, s = torch.cos(a[:, 4]), torch.sin(a[:, 4])
    for i in range(n):
        k = int(kind[i])
        if k == 1:  # identical
            b[i] = a[i]
        elif k == 2:  # same footprint, other parametrisation
            b[i] = torch.stack(
                [a[i, 0], a[i, 1], a[i, 3], a[i, 2], a[i, 4] + math.pi / 2]
            )
        elif k == 3:  # zero or negative sizes
            a[i, 2 + int(torch.randint(0, 2, (1,), generator=gen))] *= float(
                torch.randint(-1, 1, (1,), generator=gen)
            )
        elif k == 4:  # touching along the heading (shared edge line)
            b[i, 4] = a[i, 4]
            off = (a[i, 2] + b[i, 2]) / 2
            b[i, 0], b[i, 1] = a[i, 0] + off * c[i], a[i, 1] + off * s[i]
        elif (
            k == 5
        ):  # collinear edges: same heading and width, shifted along the heading
            b[i, 4], b[i, 3] = a[i, 4], a[i, 3]
            off = float(torch.rand(1, generator=gen)) * a[i, 2]
            b[i, 0], b[i, 1] = a[i, 0] + off * c[i], a[i, 1] + off * s[i]
        elif k == 6:  # contained, any heading
            b[i, :2] = a[i, :2]
            b[i, 2:4] = a[i, 2:4].min() * 0.3
        elif k == 7:  # same centre, other heading
            b[i, :2] = a[i, :2]
        elif k == 8:  # touching corners (axis-aligned)
            a[i, 4] = b[i, 4] = 0.0
            b[i, 0] = a[i, 0] + (a[i, 2] + b[i, 2]) / 2
            b[i, 1] = a[i, 1] + (a[i, 3] + b[i, 3]) / 2
        elif k == 9:  # tiny boxes far from the origin
            a[i, :2] += 1000.0
            b[i, :2] = a[i, :2] + 1e-3
            a[i, 2:4] *= 1e-2
            b[i, 2:4] *= 1e-2
        elif k == 10:  # integer grid, axis-aligned: exact collinearities
            a[i] = torch.tensor(
                [float(torch.randint(0, 4, (1,), generator=gen)), 0.0, 2.0, 2.0, 0.0]
            )
            b[i] = torch.tensor(
                [
                    float(torch.randint(0, 4, (1,), generator=gen)),
                    1.0,
                    2.0,
                    2.0,
                    math.pi,
                ]
            )
    return a, b


def test_native_equals_reference_on_hard_pairs() -> None:
    native = _native()
    a, b = _hard_pairs(1000, seed=5)
    for start in range(
        0, 1000, 40
    ):  # 25 blocks of 40 x 40 pairs, the designed pair on the diagonal
        sa, sb = a[start : start + 40], b[start : start + 40]
        ref = rotated_iou_reference(sa, sb)
        nat = native.rotated_iou(sa, sb)
        assert torch.isfinite(ref).all() and torch.isfinite(nat).all()
        assert ((ref >= 0) & (ref <= 1)).all()
        assert torch.allclose(nat, ref, atol=1e-5), (nat - ref).abs().max()
        assert torch.allclose(rotated_iou(sa, sb), ref, atol=1e-5)
    # float32 input: computed in double all the same.
    nat32 = native.rotated_iou(a[:100].float(), b[:100].float())
    ref32 = rotated_iou_reference(a[:100].float(), b[:100].float())
    assert nat32.dtype == torch.float32 and torch.allclose(nat32, ref32, atol=1e-5)


@pytest.mark.parametrize("case", [c for c in HAND_CASES if c[2] is not None])
def test_native_hand_cases(case) -> None:
    a, b, expected = case
    assert float(_native().rotated_iou(_t(a), _t(b))[0, 0]) == pytest.approx(
        expected, abs=1e-9
    )


# ------------------------------------------------------------------------------- NMS


def _nms_scene(
    n: int, seed: int, levels: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    boxes = _random_boxes(n, gen, extent=12.0).float()
    boxes[n // 2 : n // 2 + 5] = boxes[:5]  # exact duplicates
    if levels is None:
        scores = torch.rand(n, generator=gen)
    else:  # many ties
        scores = torch.randint(0, levels, (n,), generator=gen).float() / levels
    return boxes, scores


def test_nms_reference_small_cases() -> None:
    boxes = _t([0, 0, 2, 2, 0], [0.1, 0, 2, 2, 0.05], [5, 5, 1, 1, 0], [0, 0, 2, 2, 0])
    scores = torch.tensor([0.5, 0.9, 0.3, 0.5])
    # 1 (best) suppresses 0 and 3 (IoU > 0.5); 2 is apart.
    assert nms_reference(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms_reference(boxes, scores, 1.0).tolist() == [1, 0, 3, 2]  # nothing is > 1
    # Ties keep the input order: 0 before 3; the identical 3 is suppressed by 0.
    assert nms_reference(
        boxes[[0, 3, 2]], torch.tensor([0.5, 0.5, 0.1]), 0.99
    ).tolist() == [0, 2]
    assert nms_reference(boxes, scores, -1.0).tolist() == [
        1
    ]  # IoU 0 > -1: all suppressed


@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.3, 0.7, 0.99, -0.5])
@pytest.mark.parametrize("levels", [None, 3])
def test_native_nms_equals_reference(threshold: float, levels: int | None) -> None:
    native = _native()
    for seed in range(3):
        boxes, scores = _nms_scene(300, seed, levels)
        ref = nms_reference(boxes, scores, threshold)
        assert ref.dtype == torch.long
        nat = native.nms_rotated(boxes, scores, threshold)
        assert nat.dtype == torch.long
        assert torch.equal(nat, ref), (threshold, levels, seed)
        assert torch.equal(nms_rotated(boxes, scores, threshold), ref)
        # Kept boxes come by decreasing score and overlap each other at most `threshold`.
        assert (scores[ref][1:] <= scores[ref][:-1]).all()
        if threshold >= 0 and ref.numel() > 1:
            iou = rotated_iou_reference(boxes[ref], boxes[ref]).fill_diagonal_(0)
            assert iou.max() <= threshold + 1e-6


def test_fallback_without_native(monkeypatch) -> None:
    mod = _module()
    boxes, scores = _nms_scene(60, 0, 4)
    expected_iou = mod.rotated_iou_reference(boxes, boxes[:20])
    expected_keep = mod.nms_reference(boxes, scores, 0.2)
    monkeypatch.setattr(mod, "load_native", lambda: None)
    assert torch.equal(mod.rotated_iou(boxes, boxes[:20]), expected_iou)
    assert torch.equal(mod.nms_rotated(boxes, scores, 0.2), expected_keep)


def test_fallback_when_native_lacks_the_ops(monkeypatch) -> None:
    """An extension built before these ops existed: the references are used."""
    import types

    mod = _module()
    old = types.SimpleNamespace(with_cuda=False, in_group_index=None)
    monkeypatch.setattr(mod, "load_native", lambda: old)
    boxes, scores = _nms_scene(20, 1, None)
    assert torch.equal(
        mod.nms_rotated(boxes, scores, 0.3), mod.nms_reference(boxes, scores, 0.3)
    )
