"""Vectorized first-hit ray casting against oriented boxes and the ground plane.

The world is a set of boxes (centre, half size, yaw about z) above a ground plane
at z = 0. Rays are binned by azimuth and elevation around a casting centre, and each
box is entered into the angular bins its (conservatively inflated) extent covers; a
ray is tested only against the boxes of its bin. The (ray, box) candidate pairs are
built with repeats and scans, tested with the slab method all at once, and reduced
per ray with ``reduceat``: no Python loop over rays, boxes or bins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpicture.synth import portable as pm

TWO_PI = 2.0 * np.pi


@dataclass
class Boxes:
    """Oriented boxes in the world frame."""

    center: np.ndarray  # (M, 3) float64, m
    half: np.ndarray  # (M, 3) float64 half extents along the box's own x (length), y, z
    yaw: np.ndarray  # (M,) float64 rad about world z

    def __len__(self) -> int:
        return len(self.yaw)


@dataclass
class Hits:
    """Nearest and second-nearest surfaces along each ray (``inf`` where none)."""

    t1: np.ndarray  # (R,) distance along the (unit) ray to the first surface
    box1: np.ndarray  # (R,) int64 box index of the first surface, -1 for the ground, -2 for none
    cos1: np.ndarray  # (R,) |cos| of the incidence angle at the first surface
    side1: np.ndarray  # (R,) bool: the first surface is a vertical face of its box
    t2: np.ndarray  # (R,) the surface behind the first (a box or the ground)
    box2: np.ndarray  # (R,) int64, as box1
    cos2: np.ndarray  # (R,)


def _angular_bins(
    boxes: Boxes, centre: np.ndarray, slack: float, n_az: int, el_edges: np.ndarray, max_range: float
) -> tuple[np.ndarray, np.ndarray]:
    """Enter each box into every (azimuth, elevation) bin its extent may cover, as
    seen from any origin within ``slack`` of ``centre``. Returns (bin id, box id) pairs."""
    m = len(boxes)
    if m == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    s, c = pm.sincos(boxes.yaw)
    hx = boxes.half[:, 0] + slack
    hy = boxes.half[:, 1] + slack
    # Footprint corners (M, 4, 2) relative to the casting centre.
    sx = np.array([1.0, 1.0, -1.0, -1.0])
    sy = np.array([1.0, -1.0, -1.0, 1.0])
    cx = boxes.center[:, None, 0] - centre[0] + sx * hx[:, None] * c[:, None] - sy * hy[:, None] * s[:, None]
    cy = boxes.center[:, None, 1] - centre[1] + sx * hx[:, None] * s[:, None] + sy * hy[:, None] * c[:, None]
    # Horizontal distance from the centre to the footprint (0 if inside), and the farthest corner.
    rel = boxes.center[:, :2] - centre[:2]
    lx = np.abs(rel[:, 0] * c + rel[:, 1] * s)
    ly = np.abs(-rel[:, 0] * s + rel[:, 1] * c)
    dmin = pm.hypot(np.maximum(lx - hx, 0.0), np.maximum(ly - hy, 0.0))
    dmax = np.sqrt(cx**2 + cy**2).max(1)
    inside = dmin <= 0.0
    keep = dmin <= max_range + slack
    # Azimuth span: relative to the centre azimuth of the box (spans < pi when outside).
    az_c = pm.arctan2(rel[:, 1], rel[:, 0])
    d = pm.arctan2(cy, cx) - az_c[:, None]
    d = (d + np.pi) % TWO_PI - np.pi
    a_lo = np.where(inside, -np.pi, az_c + d.min(1))
    a_hi = np.where(inside, np.pi, az_c + d.max(1))
    b_lo = np.floor((a_lo + np.pi) / TWO_PI * n_az).astype(np.int64)
    b_hi = np.floor((a_hi + np.pi) / TWO_PI * n_az).astype(np.int64)
    b_hi = np.where(inside, b_lo + n_az - 1, b_hi)
    # Elevation span (z relative to the centre; the origin may sit `slack` higher or lower).
    zb = boxes.center[:, 2] - boxes.half[:, 2] - centre[2] - slack
    zt = boxes.center[:, 2] + boxes.half[:, 2] - centre[2] + slack
    dn = np.maximum(dmin, 1e-6)
    e_lo = pm.arctan2(zb, np.where(zb < 0, dn, dmax))
    e_hi = pm.arctan2(zt, np.where(zt > 0, dn, dmax))
    e_lo = np.where(inside & (zb < 0), -np.pi / 2, e_lo)
    e_hi = np.where(inside & (zt > 0), np.pi / 2, e_hi)
    n_el = len(el_edges) - 1
    f_lo = np.clip(np.searchsorted(el_edges, e_lo, side="right") - 1, 0, n_el - 1)
    f_hi = np.clip(np.searchsorted(el_edges, e_hi, side="right") - 1, 0, n_el - 1)
    idx = np.nonzero(keep)[0]
    n_a = (b_hi - b_lo + 1)[idx]
    n_e = (f_hi - f_lo + 1)[idx]
    # Expand each box into its n_a x n_e rectangle of bins.
    per = n_a * n_e
    box_of = np.repeat(idx, per)
    k = np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per)
    ne = np.repeat(n_e, per)
    a_bin = (np.repeat(b_lo[idx], per) + k // ne) % n_az
    e_bin = np.repeat(f_lo[idx], per) + k % ne
    return a_bin * n_el + e_bin, box_of


def cast(
    origins: np.ndarray,
    dirs: np.ndarray,
    boxes: Boxes,
    max_range: float,
    centre: np.ndarray | None = None,
    n_az: int = 720,
    n_el: int = 24,
) -> Hits:
    """First and second hits of unit rays ``origins + t * dirs`` (world frame, m).

    ``origins`` is (R, 3) or (3,); rays are binned around ``centre`` (default: the
    mean origin), with box extents inflated by the largest origin offset so that the
    culling never drops a true hit. Surfaces beyond ``max_range`` are ignored.
    """
    dirs = np.asarray(dirs, dtype=np.float64)
    r = len(dirs)
    origins = np.broadcast_to(np.asarray(origins, dtype=np.float64), (r, 3))
    if centre is None:
        centre = origins.mean(0) if r else np.zeros(3)
    slack = float(np.sqrt(((origins - centre) ** 2).sum(1)).max()) if r else 0.0

    # Ground plane z = 0.
    dz = dirs[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        tg = np.where(dz < -1e-9, -origins[:, 2] / dz, np.inf)
    tg = np.where((tg > 0) & (tg <= max_range), tg, np.inf)

    # Ray bins.
    az = pm.arctan2(dirs[:, 1], dirs[:, 0])
    el = pm.arcsin(np.clip(dz, -1.0, 1.0))
    el_edges = np.linspace(el.min() - 1e-6, el.max() + 1e-6, n_el + 1) if r else np.array([0.0, 1.0])
    ray_az = np.clip(np.floor((az + np.pi) / TWO_PI * n_az).astype(np.int64), 0, n_az - 1)
    ray_el = np.clip(np.searchsorted(el_edges, el, side="right") - 1, 0, n_el - 1)
    ray_bin = ray_az * n_el + ray_el

    bin_id, box_id = _angular_bins(boxes, centre, slack, n_az, el_edges, max_range)
    order = np.argsort(bin_id, kind="stable")
    bin_id, box_id = bin_id[order], box_id[order]
    bin_ptr = np.searchsorted(bin_id, np.arange(n_az * n_el + 1))
    counts = bin_ptr[ray_bin + 1] - bin_ptr[ray_bin]
    total = int(counts.sum())

    t1 = tg.copy()
    box1 = np.where(np.isfinite(tg), -1, -2).astype(np.int64)
    cos1 = np.abs(dz)
    side1 = np.zeros(r, dtype=bool)
    t2 = np.full(r, np.inf)
    box2 = np.full(r, -2, dtype=np.int64)
    cos2 = np.zeros(r)
    if total == 0:
        return Hits(t1, box1, cos1, side1, t2, box2, cos2)

    pr = np.repeat(np.arange(r), counts)
    starts = np.cumsum(counts) - counts
    pb = box_id[np.repeat(bin_ptr[ray_bin], counts) + np.arange(total) - np.repeat(starts, counts)]

    # Slab test in each box's frame.
    box_sin, box_cos = pm.sincos(boxes.yaw)  # once per box, not per pair
    c, s = box_cos[pb], box_sin[pb]
    o = origins[pr] - boxes.center[pb]
    d = dirs[pr]
    lo = np.stack([o[:, 0] * c + o[:, 1] * s, -o[:, 0] * s + o[:, 1] * c, o[:, 2]], 1)
    ld = np.stack([d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c, d[:, 2]], 1)
    h = boxes.half[pb]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / np.where(np.abs(ld) < 1e-12, 1e-12, ld)
        ta = (-h - lo) * inv
        tb = (h - lo) * inv
    tnear3 = np.minimum(ta, tb)
    tnear = tnear3.max(1)
    tfar = np.maximum(ta, tb).min(1)
    hit = (tfar >= tnear) & (tnear > 1e-6) & (tnear <= max_range)
    tp = np.where(hit, tnear, np.inf)
    axis = tnear3.argmax(1)
    cosp = np.abs(ld[np.arange(total), axis])

    # Per-ray nearest and second-nearest box hit (pairs are grouped by ray).
    nz = counts > 0
    seg = starts[nz]
    rays = np.nonzero(nz)[0]
    m1 = np.minimum.reduceat(tp, seg)
    rep_m1 = np.repeat(_scatter(r, rays, m1), counts)
    is1 = np.isfinite(tp) & (tp == rep_m1)
    first_pair = _first_true_per_segment(is1, pr, r)
    tp2 = np.where(is1, np.inf, tp)
    m2 = _scatter(r, rays, np.minimum.reduceat(tp2, seg))
    is2 = np.isfinite(tp2) & (tp2 == np.repeat(m2, counts))
    second_pair = _first_true_per_segment(is2, pr, r)

    bt1 = _scatter(r, rays, m1)
    has1 = first_pair >= 0
    fp = first_pair[has1]
    bc1 = np.full(r, -2, np.int64)
    bc1[has1] = pb[fp]
    bcos1 = np.zeros(r)
    bcos1[has1] = cosp[fp]
    bside1 = np.zeros(r, bool)
    bside1[has1] = axis[fp] != 2
    has2 = second_pair >= 0
    sp = second_pair[has2]
    bt2 = m2
    bc2 = np.full(r, -2, np.int64)
    bc2[has2] = pb[sp]
    bcos2 = np.zeros(r)
    bcos2[has2] = cosp[sp]

    # Merge with the ground: order the three candidates (box1, box2, ground).
    box_first = bt1 < tg
    t1 = np.where(box_first, bt1, tg)
    box1 = np.where(box_first, bc1, box1)
    cos1 = np.where(box_first, bcos1, cos1)
    side1 = np.where(box_first, bside1, False)
    ground_second = box_first & (tg < bt2)
    t2 = np.where(box_first, np.where(ground_second, tg, bt2), bt1)
    box2 = np.where(box_first, np.where(ground_second, np.where(np.isfinite(tg), -1, -2), bc2), bc1)
    cos2 = np.where(box_first, np.where(ground_second, np.abs(dz), bcos2), bcos1)
    return Hits(t1, box1, cos1, side1, t2, box2, cos2)


def _scatter(r: int, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.full(r, np.inf)
    out[rows] = values
    return out


def _first_true_per_segment(flags: np.ndarray, seg_of: np.ndarray, r: int) -> np.ndarray:
    """Index of the first True in each ray's pair run, -1 where none."""
    out = np.full(r, -1, dtype=np.int64)
    idx = np.nonzero(flags)[0]
    # Reverse assignment: the earliest index of a ray is written last and wins.
    out[seg_of[idx[::-1]]] = idx[::-1]
    return out
