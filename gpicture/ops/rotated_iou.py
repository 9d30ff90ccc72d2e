"""Rotated bird's-eye-view (BEV) IoU and NMS of oriented boxes.

Used by CenterPoint-style detection decoding. Box convention:

* ``(N, 5)``: ``x, y, dx, dy, heading`` in metres and radians; ``dx`` is the
  extent along the heading, ``dy`` across it (the box is centred on ``x, y``).
* ``(N, 7)``: ``x, y, z, dx, dy, dz, heading`` (the usual 3-D box layout); only
  columns ``[0, 1, 3, 4, 6]`` are used, i.e. the IoU is the BEV IoU of the boxes'
  footprints, whatever their heights.

Boxes with a zero or negative ``dx`` or ``dy`` have zero area: their IoU with any
box is 0. The IoU of two boxes is ``inter / (area_a + area_b - inter)``, and 0
where the union is 0.

The native ops (``csrc/rotated_iou*.{cpp,cu}``) clip one rectangle by the other
(Sutherland-Hodgman, in double precision). The pure-torch references below build
the intersection polygon from the corners of each box inside the other and the
edge-edge crossings, order its points by angle and take the shoelace area, fully
vectorized over pairs (float64 internally); they run on any device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gpicture.ops.native import load_native

__all__ = ["nms_reference", "nms_rotated", "rotated_iou", "rotated_iou_reference"]

# Pairs processed at once by the reference (bounds its memory to ~100 MB).
_PAIRS_PER_CHUNK = 1 << 16
# Relative tolerances of the reference's geometric predicates (float64).
_INSIDE_TOL = 1e-9
_PARAM_TOL = 1e-9
_PARALLEL_TOL = 1e-9


def _as_bev(boxes: Tensor, name: str = "boxes") -> Tensor:
    """``(N, 5)`` BEV view of ``(N, 5)`` or ``(N, 7)`` boxes (validated)."""
    if boxes.dim() != 2 or boxes.shape[1] not in (5, 7):
        raise ValueError(
            f"{name} must have shape (N, 5) or (N, 7), got {tuple(boxes.shape)}"
        )
    if boxes.shape[1] == 7:
        boxes = boxes[:, [0, 1, 3, 4, 6]]
    return boxes


def _out_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


def _cross(ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor) -> Tensor:
    return ax * by - ay * bx


def _corners(
    x: Tensor, y: Tensor, hx: Tensor, hy: Tensor, c: Tensor, s: Tensor
) -> tuple[Tensor, Tensor]:
    """Counter-clockwise corners ``(P, 4)`` x and y of boxes given by half sizes."""
    lx = torch.stack([hx, -hx, -hx, hx], dim=-1)
    ly = torch.stack([hy, hy, -hy, -hy], dim=-1)
    cx = x[:, None] + lx * c[:, None] - ly * s[:, None]
    cy = y[:, None] + lx * s[:, None] + ly * c[:, None]
    return cx, cy


def _inside(
    px: Tensor,
    py: Tensor,
    x: Tensor,
    y: Tensor,
    hx: Tensor,
    hy: Tensor,
    c: Tensor,
    s: Tensor,
) -> Tensor:
    """Whether points ``(P, K)`` lie in (or on the boundary of) boxes ``(P,)``."""
    ux = px - x[:, None]
    uy = py - y[:, None]
    u = ux * c[:, None] + uy * s[:, None]
    v = -ux * s[:, None] + uy * c[:, None]
    tol = (_INSIDE_TOL * (hx + hy))[:, None]
    return (u.abs() <= hx[:, None] + tol) & (v.abs() <= hy[:, None] + tol)


def _paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of paired float64 BEV boxes ``a[p]`` and ``b[p]``, both ``(P, 5)``."""
    hxa = a[:, 2].clamp(min=0) / 2
    hya = a[:, 3].clamp(min=0) / 2
    hxb = b[:, 2].clamp(min=0) / 2
    hyb = b[:, 3].clamp(min=0) / 2
    area_a = 4 * hxa * hya
    area_b = 4 * hxb * hyb
    # Work relative to a's centre: small coordinates, less cancellation.
    zeros = torch.zeros_like(hxa)
    xb = b[:, 0] - a[:, 0]
    yb = b[:, 1] - a[:, 1]
    ca, sa = torch.cos(a[:, 4]), torch.sin(a[:, 4])
    cb, sb = torch.cos(b[:, 4]), torch.sin(b[:, 4])
    ax, ay = _corners(zeros, zeros, hxa, hya, ca, sa)  # (P, 4)
    bx, by = _corners(xb, yb, hxb, hyb, cb, sb)

    # 1) corners of each box inside the other.
    a_in_b = _inside(ax, ay, xb, yb, hxb, hyb, cb, sb)
    b_in_a = _inside(bx, by, zeros, zeros, hxa, hya, ca, sa)

    # 2) crossings of the edges of a (p -> p + r) with those of b (q -> q + s): (P, 4, 4).
    rx = (ax.roll(-1, dims=1) - ax)[:, :, None]
    ry = (ay.roll(-1, dims=1) - ay)[:, :, None]
    sx = (bx.roll(-1, dims=1) - bx)[:, None, :]
    sy = (by.roll(-1, dims=1) - by)[:, None, :]
    qpx = bx[:, None, :] - ax[:, :, None]
    qpy = by[:, None, :] - ay[:, :, None]
    den = _cross(rx, ry, sx, sy)
    # Parallel (and collinear) edges cross nowhere useful: the overlap of collinear
    # edges is bounded by corners, which the inside tests of 1) already keep.
    norm = torch.sqrt((rx * rx + ry * ry) * (sx * sx + sy * sy))
    not_parallel = den.abs() > _PARALLEL_TOL * norm
    den = torch.where(not_parallel, den, torch.ones_like(den))
    t = _cross(qpx, qpy, sx, sy) / den
    u = _cross(qpx, qpy, rx, ry) / den
    crosses = (
        not_parallel
        & (t >= -_PARAM_TOL)
        & (t <= 1 + _PARAM_TOL)
        & (u >= -_PARAM_TOL)
        & (u <= 1 + _PARAM_TOL)
    )
    t = t.clamp(0, 1)
    ix = (ax[:, :, None] + t * rx).flatten(1)
    iy = (ay[:, :, None] + t * ry).flatten(1)

    px = torch.cat([ax, bx, ix], dim=1)  # (P, 24)
    py = torch.cat([ay, by, iy], dim=1)
    valid = torch.cat([a_in_b, b_in_a, crosses.flatten(1)], dim=1)
    count = valid.sum(dim=1)

    # 3) order the points by angle around their centroid; invalid points go last.
    w = valid.to(px.dtype)
    denom = count.clamp(min=1).to(px.dtype)
    gx = (px * w).sum(dim=1) / denom
    gy = (py * w).sum(dim=1) / denom
    px = torch.where(valid, px - gx[:, None], torch.zeros_like(px))
    py = torch.where(valid, py - gy[:, None], torch.zeros_like(py))
    angle = torch.where(valid, torch.atan2(py, px), torch.full_like(px, float("inf")))
    order = angle.argsort(dim=1, stable=True)
    px = px.gather(1, order)
    py = py.gather(1, order)
    valid = valid.gather(1, order)

    # 4) shoelace over the valid prefix, closing back to its first point.
    k = torch.arange(px.shape[1], device=px.device)[None, :]
    nxt = torch.where(k + 1 < count[:, None], k + 1, torch.zeros_like(k))
    qx = px.gather(1, nxt)
    qy = py.gather(1, nxt)
    terms = torch.where(valid, _cross(px, py, qx, qy), torch.zeros_like(px))
    inter = (terms.sum(dim=1) / 2).abs()
    inter = torch.where(count >= 3, inter, torch.zeros_like(inter))
    inter = torch.minimum(inter, torch.minimum(area_a, area_b))
    inter = torch.where((area_a > 0) & (area_b > 0), inter, torch.zeros_like(inter))

    union = area_a + area_b - inter
    iou = torch.where(
        union > 0,
        inter / torch.where(union > 0, union, torch.ones_like(union)),
        torch.zeros_like(union),
    )
    return iou.clamp(0, 1)


def rotated_iou_reference(a: Tensor, b: Tensor) -> Tensor:
    """Pure-torch BEV IoU matrix ``(N, M)`` of boxes ``a (N, 5|7)`` and ``b (M, 5|7)``.

    Computed in float64 over all pairs at once (in chunks of pairs to bound
    memory); returned in the floating dtype of the inputs.
    """
    a5 = _as_bev(a, "a").to(torch.float64)
    b5 = _as_bev(b, "b").to(device=a.device, dtype=torch.float64)
    n, m = a5.shape[0], b5.shape[0]
    out = torch.zeros(n * m, dtype=torch.float64, device=a.device)
    for start in range(0, n * m, _PAIRS_PER_CHUNK):
        idx = torch.arange(start, min(start + _PAIRS_PER_CHUNK, n * m), device=a.device)
        out[idx] = _paired_iou(a5[idx // m], b5[idx % m])
    return out.view(n, m).to(_out_dtype(a, b))


def nms_reference(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Pure-torch greedy rotated NMS: kept indices, by decreasing score.

    Boxes are visited by decreasing score (a stable sort: ties keep their input
    order); a box is kept unless its IoU with an already kept box is ``>
    iou_threshold``, and each kept box suppresses the remaining ones it overlaps.
    """
    b5 = _as_bev(boxes).to(torch.float64)
    if scores.dim() != 1 or scores.shape[0] != b5.shape[0]:
        raise ValueError(
            f"scores must have shape ({b5.shape[0]},), got {tuple(scores.shape)}"
        )
    order = torch.sort(scores, descending=True, stable=True).indices
    b5 = b5[order]
    n = b5.shape[0]
    suppressed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    keep: list[int] = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = torch.nonzero(~suppressed[i + 1 :]).flatten() + (i + 1)
        if rest.numel() == 0:
            break
        iou = _paired_iou(b5[i : i + 1].expand(rest.numel(), 5), b5[rest])
        suppressed[rest[iou > iou_threshold]] = True
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def _native_usable(name: str, *tensors: Tensor):
    native = load_native()
    if native is None or not hasattr(native, name):
        return None
    if any(t.is_cuda for t in tensors) and not native.with_cuda:
        return None
    if any(t.device != tensors[0].device for t in tensors):
        return None
    if not all(t.is_cuda or t.device.type == "cpu" for t in tensors):
        return None
    return native


def rotated_iou(a: Tensor, b: Tensor) -> Tensor:
    """BEV IoU matrix ``(N, M)`` through the native op when built, else the reference."""
    native = _native_usable("rotated_iou", a, b)
    if native is not None:
        return native.rotated_iou(a, b)
    return rotated_iou_reference(a, b)


def paired_iou_3d(a: Tensor, b: Tensor) -> Tensor:
    """3D IoU (P,) of paired upright boxes ``a[p]``, ``b[p]`` (P, 7) x, y, z, l, w, h, yaw (m, rad;
    z the centre): rotated BEV intersection times the z overlap, over the union of the volumes.
    Float64 inside; no gradient (a training target)."""
    a64, b64 = a.detach().double(), b.detach().double()
    bev = _paired_iou(a64[:, [0, 1, 3, 4, 6]], b64[:, [0, 1, 3, 4, 6]])
    area_a, area_b = a64[:, 3] * a64[:, 4], b64[:, 3] * b64[:, 4]
    inter = bev * (area_a + area_b) / (1 + bev)  # IoU = I / (A + B - I)
    lo = torch.maximum(a64[:, 2] - a64[:, 5] / 2, b64[:, 2] - b64[:, 5] / 2)
    hi = torch.minimum(a64[:, 2] + a64[:, 5] / 2, b64[:, 2] + b64[:, 5] / 2)
    inter3 = inter * (hi - lo).clamp_min(0)
    union = area_a * a64[:, 5] + area_b * b64[:, 5] - inter3
    return torch.where(union > 0, inter3 / union.clamp_min(1e-12), torch.zeros_like(union)).to(a.dtype)


def nms_rotated(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy rotated NMS through the native op when built, else the reference.

    Returns the int64 indices of the kept boxes, by decreasing score.
    """
    native = _native_usable("nms_rotated", boxes, scores)
    if native is not None:
        return native.nms_rotated(boxes, scores, float(iou_threshold))
    return nms_reference(boxes, scores, iou_threshold)
