"""The streets of a procedural scene: the road layout, the ground's kinds and the static boxes.

Layout (world frame, metres, z up): a four-lane main road along x (|y| < 7, lanes
of 3.5 m, traffic drives on the right), a crossing road along y at ``x = cross_x``,
raised sidewalks (15 cm curbs) from 7 to 10 m off each road axis, terrain beyond,
then buildings. Every surface is an oriented box of a *kind* (taxonomy.KINDS); the
ground z = 0 takes its kind from the road layout. ``polyline`` and ``turn_path`` draw the
paths that agents follow along these streets.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from gpicture.synth import portable as pm
from gpicture.synth.raycast import Boxes
from gpicture.synth.taxonomy import KIND_INDEX

ROAD_HALF = 7.0  # m, 2 lanes each way
LANE = 3.5
SIDEWALK_OUT = 10.0
CURB_H = 0.15
K = KIND_INDEX


@dataclass
class StaticWorld:
    """Static boxes of a scene and the road layout that labels the ground."""

    boxes: Boxes
    kind: np.ndarray  # (M,) int kind of the box (top/bottom faces)
    side_kind: np.ndarray  # (M,) int kind of its vertical faces (curbs on sidewalk slabs)
    cross_x: float

    def ground_kind(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Kind of the ground (z = 0) at world (x, y): road, lane marker or terrain."""
        on_main = np.abs(y) < ROAD_HALF
        on_cross = np.abs(x - self.cross_x) < ROAD_HALF
        # Lane markers: dashed lines between same-direction lanes, solid centre line.
        dash = (np.mod(x, 9.0) < 3.0) & (np.abs(np.abs(y) - LANE) < 0.075)
        centre = np.abs(y) < 0.1
        in_junction = on_main & on_cross
        marker = on_main & ~in_junction & (dash | centre)
        kind = np.where(on_main | on_cross, K["road"], K["terrain"])
        return np.where(marker, K["lane_marker"], kind).astype(np.int64)


class _BoxList:
    """Accumulates boxes (centre, half size, yaw, kind, side kind) before stacking."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []

    def add(self, cx, cy, cz, hx, hy, hz, yaw, kind, side=None) -> None:
        arrs = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in
                                    (cx, cy, cz, hx, hy, hz, yaw, kind, kind if side is None else side)))
        self.rows.append(np.stack(arrs, 1))

    def stack(self) -> np.ndarray:
        return np.concatenate(self.rows) if self.rows else np.zeros((0, 9))


def static_world(rng: np.random.Generator, x_min: float, x_max: float, cross_x: float) -> StaticWorld:
    """The static boxes of a scene: sidewalk slabs, and buildings, trees, poles, signs and bushes
    along both roads, from ``x_min`` to ``x_max`` (the crossing road at ``cross_x``)."""
    b = _BoxList()
    mid_h = CURB_H / 2
    sw_half = (SIDEWALK_OUT - ROAD_HALF) / 2
    sw_mid = (SIDEWALK_OUT + ROAD_HALF) / 2
    # Sidewalk slabs along the main road (split at the crossing) and along the crossing road.
    for lo, hi in ((x_min, cross_x - ROAD_HALF), (cross_x + ROAD_HALF, x_max)):
        for sgn in (-1, 1):
            b.add((lo + hi) / 2, sgn * sw_mid, mid_h, (hi - lo) / 2, sw_half, mid_h, 0.0, K["sidewalk"], K["curb"])
    far = 90.0
    for sgn_x in (-1, 1):
        for sgn_y in (-1, 1):
            cy = sgn_y * (SIDEWALK_OUT + far) / 2
            b.add(cross_x + sgn_x * sw_mid, cy, mid_h, sw_half, (far - SIDEWALK_OUT) / 2, mid_h, 0.0, K["sidewalk"], K["curb"])

    def frontage(along: np.ndarray, sgn: int, cross: bool) -> None:
        """Buildings, trees, poles and signs along one side of a road; `along` are free intervals."""
        for lo, hi in along:
            x = lo + rng.uniform(0, 4)
            while x < hi - 6:
                width = rng.uniform(8, 30)
                width = min(width, hi - x)
                depth = rng.uniform(8, 18)
                height = rng.uniform(5, 25)
                setback = SIDEWALK_OUT + rng.uniform(3, 9)
                off = sgn * (setback + depth / 2)
                cx, cy = (x + width / 2, off) if not cross else (cross_x + off, x + width / 2)
                hx, hy = (width / 2, depth / 2) if not cross else (depth / 2, width / 2)
                b.add(cx, cy, height / 2, hx, hy, height / 2, 0.0, K["building"])
                x += width + rng.uniform(2, 10)
            # Street trees and poles on the sidewalk edge, bushes on the terrain.
            n_trees = rng.poisson((hi - lo) / 14)
            pos = rng.uniform(lo, hi, n_trees)
            off = sgn * (SIDEWALK_OUT - 0.8)
            th = rng.uniform(2.0, 3.5, n_trees)
            cr = rng.uniform(1.2, 2.4, n_trees)
            ch = rng.uniform(2.0, 4.0, n_trees)
            xs, ys = (pos, np.full(n_trees, off)) if not cross else (np.full(n_trees, cross_x + off), pos)
            b.add(xs, ys, CURB_H + th / 2, 0.18, 0.18, th / 2, rng.uniform(0, np.pi, n_trees), K["trunk"])
            b.add(xs, ys, CURB_H + th + ch / 2, cr, cr, ch / 2, rng.uniform(0, np.pi, n_trees), K["vegetation"])
            n_poles = rng.poisson((hi - lo) / 25)
            pos = rng.uniform(lo, hi, n_poles)
            off = sgn * (ROAD_HALF + 0.5)
            ph = rng.uniform(4, 8, n_poles)
            xs, ys = (pos, np.full(n_poles, off)) if not cross else (np.full(n_poles, cross_x + off), pos)
            b.add(xs, ys, CURB_H + ph / 2, 0.1, 0.1, ph / 2, 0.0, K["pole"])
            signs = rng.random(n_poles) < 0.4
            yaw_sign = 0.0 if cross else np.pi / 2
            b.add(xs[signs], ys[signs], CURB_H + ph[signs] - 0.6, 0.03, 0.4, 0.4, yaw_sign, K["sign"])
            n_bush = rng.poisson((hi - lo) / 10)
            pos = rng.uniform(lo, hi, n_bush)
            off = sgn * rng.uniform(SIDEWALK_OUT + 0.8, SIDEWALK_OUT + 2.5, n_bush)
            bh = rng.uniform(0.4, 1.4, n_bush)
            xs, ys = (pos, off) if not cross else (cross_x + off, pos)
            b.add(xs, ys, bh / 2, rng.uniform(0.4, 1.5, n_bush), rng.uniform(0.4, 1.5, n_bush), bh / 2,
                  rng.uniform(0, np.pi, n_bush), K["vegetation"])

    main_free = np.array([[x_min, cross_x - SIDEWALK_OUT - 2], [cross_x + SIDEWALK_OUT + 2, x_max]])
    cross_free = np.array([[-far, -SIDEWALK_OUT - 2], [SIDEWALK_OUT + 2, far]])
    for sgn in (-1, 1):
        frontage(main_free, sgn, cross=False)
        frontage(cross_free, sgn, cross=True)
    rows = b.stack()
    boxes = Boxes(center=rows[:, 0:3].copy(), half=rows[:, 3:6].copy(), yaw=rows[:, 6].copy())
    return StaticWorld(boxes=boxes, kind=rows[:, 7].astype(np.int64), side_kind=rows[:, 8].astype(np.int64), cross_x=cross_x)


def polyline(points: list[tuple[float, float]], step: float = 0.5) -> np.ndarray:
    """Resample a polyline of corner points at about `step` metres."""
    pts = np.asarray(points, dtype=np.float64)
    out = [pts[:1]]
    for p0, p1 in itertools.pairwise(pts):
        n = max(int(np.ceil(pm.norm(p1 - p0) / step)), 1)
        f = np.arange(1, n + 1)[:, None] / n
        out.append(p0 + f * (p1 - p0))
    return np.concatenate(out)


def turn_path(start: tuple[float, float], heading: float, turn: int, radius: float, before: float, after: float) -> np.ndarray:
    """Straight, quarter-circle turn (turn = +1 left, -1 right, 0 straight), straight."""
    p = np.asarray(start, dtype=np.float64)
    d = np.array([pm.cos(heading), pm.sin(heading)])
    a = p + d * before
    pts = [tuple(p), tuple(a)]
    if turn != 0:
        n = np.array([-d[1], d[0]]) * turn
        centre = a + n * radius
        ang0 = pm.arctan2(a[1] - centre[1], a[0] - centre[0])
        angs = ang0 + turn * np.linspace(0, np.pi / 2, 12)[1:]
        pts += [tuple(centre + radius * np.array([pm.cos(q), pm.sin(q)])) for q in angs]
        d = np.array([pm.cos(heading + turn * np.pi / 2), pm.sin(heading + turn * np.pi / 2)])
    pts.append(tuple(np.asarray(pts[-1]) + d * after))
    return polyline(pts)
