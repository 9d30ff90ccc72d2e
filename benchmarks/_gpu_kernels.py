"""Parity of the native ops of csrc/ with their references, on random and degenerate inputs.

For each op (rotated BEV IoU, rotated NMS, in-group index) and each case, the CUDA kernel
(when ``gpicture._native`` was built with CUDA and a GPU is present) is compared with the
native CPU kernel and with the pure-torch reference of ``gpicture/ops``, and the native CPU
kernel with the reference; without CUDA only the latter runs (the CPU fallback). I²Mask's
CUDA path (not a csrc kernel, but the pipeline's pre-training runs it on the GPU) is
compared with its CPU run too. Used by ``gpu_check.py`` and ``check_cuda_ops.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from gpicture.models.i2mask import i2mask
from gpicture.ops import in_group_index_reference, nms_reference, rotated_iou_reference
from gpicture.ops.native import load_native

IOU_TOL = 1e-5  # max |IoU - reference|: float32 boxes, double arithmetic on both sides


def random_boxes(n: int, seed: int, spread: float = 40.0) -> tuple[Tensor, Tensor]:
    """(n, 5) float32 BEV boxes x, y, dx, dy, yaw (m, rad) over ``spread`` m, every 17th of zero
    size, and (n,) scores."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * spread
    wh = torch.rand(n, 2, generator=g) * 4 + 0.2
    wh[::17] = 0.0
    yaw = (torch.rand(n, 1, generator=g) - 0.5) * 6.3
    return torch.cat([xy, wh, yaw], 1), torch.rand(n, generator=g)


def degenerate_boxes() -> dict[str, tuple[Tensor, Tensor]]:
    """Named (boxes (N, 5|7), scores (N,)) cases where geometry code usually breaks."""
    sq = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]])
    cases = {
        "identical": (sq.repeat(6, 1), torch.full((6,), 0.5)),  # IoU 1 everywhere, tied scores
        "rotated_90_180": (torch.tensor([[0.0, 0, 4, 2, 0], [0, 0, 4, 2, math.pi / 2], [0, 0, 4, 2, math.pi],
                                         [0, 0, 4, 2, -math.pi / 2], [0, 0, 4, 2, 2 * math.pi]]),
                           torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])),
        "touching_edges": (torch.tensor([[0.0, 0, 2, 2, 0], [2, 0, 2, 2, 0], [0, 2, 2, 2, 0], [2, 2, 2, 2, 0]]),
                           torch.tensor([0.4, 0.3, 0.2, 0.1])),
        "zero_and_negative_size": (torch.tensor([[0.0, 0, 0, 0, 0], [0, 0, 2, 0, 0.3], [0, 0, -1, 2, 0],
                                                 [0, 0, 2, 2, 0]]), torch.tensor([0.9, 0.8, 0.7, 0.6])),
        "nested": (torch.tensor([[0.0, 0, 10, 10, 0.2], [0.5, -0.3, 1, 1, 1.0], [0, 0, 0.01, 0.01, 0.0]]),
                   torch.tensor([0.1, 0.9, 0.5])),
        "far_from_origin": (torch.tensor([[1e4, -1e4, 4, 2, 0.3], [1e4 + 0.5, -1e4, 4, 2, 0.35]]),
                            torch.tensor([0.5, 0.6])),
        "seven_columns": (torch.tensor([[0.0, 0, -1, 4, 2, 1.5, 0.4], [0.5, 0.2, 3, 4, 2, 0.5, 0.5]]),
                          torch.tensor([0.5, 0.6])),
        "empty": (torch.zeros(0, 5), torch.zeros(0)),
        "single": (sq, torch.tensor([1.0])),
    }
    return cases


class Checks:
    """Collects comparisons as JSON rows: op, case, what was compared, error, ok."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, op: str, case: str, impl: str, ref: str, ok: bool, max_abs_err: float | None = None,
            detail: str = "") -> None:
        row = {"op": op, "case": case, "impl": impl, "ref": ref, "ok": bool(ok)}
        if max_abs_err is not None:
            row["max_abs_err"] = float(max_abs_err)
        if detail:
            row["detail"] = detail
        self.rows.append(row)

    @property
    def failures(self) -> int:
        return sum(not r["ok"] for r in self.rows)


def _iou_err(x: Tensor, y: Tensor) -> float:
    if x.shape != y.shape:
        return float("inf")
    return float((x.double().cpu() - y.double().cpu()).abs().max()) if x.numel() else 0.0


def _compare_iou(chk: Checks, case: str, a: Tensor, b: Tensor, native, cuda: bool) -> None:  # noqa: ANN001
    ref = rotated_iou_reference(a, b)
    cpu = native.rotated_iou(a, b)
    err = _iou_err(cpu, ref)
    chk.add("rotated_iou", case, "cpu-native", "reference", err <= IOU_TOL, err)
    if cuda:
        gpu = native.rotated_iou(a.cuda(), b.cuda())
        err = _iou_err(gpu, cpu)
        chk.add("rotated_iou", case, "cuda", "cpu-native", gpu.is_cuda and err <= 1e-6, err)
        err = _iou_err(gpu, ref)
        chk.add("rotated_iou", case, "cuda", "reference", err <= IOU_TOL, err)


def _compare_nms(chk: Checks, case: str, boxes: Tensor, scores: Tensor, native, cuda: bool) -> None:  # noqa: ANN001
    for thr in (0.0, 0.2, 0.7, 1.0, -0.5):
        ref = nms_reference(boxes, scores, thr)
        cpu = native.nms_rotated(boxes, scores, thr)
        name = f"{case} threshold {thr}"
        chk.add("nms_rotated", name, "cpu-native", "reference", torch.equal(cpu.cpu(), ref.cpu()),
                detail=f"{len(cpu)} kept")
        if cuda:
            gpu = native.nms_rotated(boxes.cuda(), scores.cuda(), thr).cpu()
            chk.add("nms_rotated", name, "cuda", "cpu-native", torch.equal(gpu, cpu.cpu()), detail=f"{len(gpu)} kept")


def _compare_group(chk: Checks, case: str, groups: Tensor, num_groups: int, native, cuda: bool) -> None:  # noqa: ANN001
    ref = in_group_index_reference(groups)
    for bound in (num_groups, -1):
        cpu = native.in_group_index(groups, bound)
        chk.add("in_group_index", f"{case} (num_groups {bound})", "cpu-native", "reference", torch.equal(cpu, ref))
        if cuda:
            gpu = native.in_group_index(groups.cuda(), bound)
            chk.add("in_group_index", f"{case} (num_groups {bound})", "cuda", "reference",
                    gpu.is_cuda and torch.equal(gpu.cpu(), ref))


def _compare_i2mask(chk: Checks, n: int) -> None:
    """I²Mask on CUDA features against the CPU run with the same CPU generator: same
    partition, cluster ratios within 1e-5 and masked fraction within 1%."""
    feats = torch.randn(n, 64, generator=torch.Generator().manual_seed(0))
    cpu = i2mask(feats, generator=torch.Generator().manual_seed(3))
    gpu = i2mask(feats.cuda(), generator=torch.Generator().manual_seed(3))
    err = float((gpu.cluster_ratio.cpu() - cpu.cluster_ratio).abs().max())
    frac = abs(float(gpu.mask.float().mean()) - float(cpu.mask.float().mean()))
    chk.add("i2mask", f"{n} x 64 random", "cuda", "cpu", gpu.mask.is_cuda and gpu.partition == cpu.partition
            and err <= 1e-5 and frac <= 0.01, err, detail=f"masked fraction differs by {frac:.4f}")


def check_kernels(large: bool, log: Callable[[str], None] = print) -> dict:
    """Every comparison (module docstring); ``large`` sizes the random cases for a GPU. Returns
    {native, with_cuda, cuda_device, checks: [...], failures, skipped?}."""
    native = load_native()
    cuda = native is not None and bool(getattr(native, "with_cuda", False)) and torch.cuda.is_available()
    out: dict = {"native": native is not None, "with_cuda": bool(native is not None and native.with_cuda),
                 "cuda_device": torch.cuda.is_available()}
    if native is None:
        out["skipped"] = "gpicture._native is not built or does not load: only the pure-torch references run"
        log(f"kernels: {out['skipped']}")
        out.update(checks=[], failures=0)
        return out
    if not cuda:
        why = "no CUDA device" if not torch.cuda.is_available() else "gpicture._native was built without CUDA"
        log(f"kernels: {why}: native CPU kernels against the references only")
    chk = Checks()
    n, m = (2000, 500) if large else (300, 100)
    boxes, scores = random_boxes(n, 0)
    _compare_iou(chk, f"random {n} x {m}", boxes, boxes[:m], native, cuda)
    for name, (b, _) in degenerate_boxes().items():
        _compare_iou(chk, name, b, b, native, cuda)
    nms_n = 1500 if large else 200
    _compare_nms(chk, f"random {nms_n}", *random_boxes(nms_n, 1, spread=30.0), native, cuda)
    for name, (b, s) in degenerate_boxes().items():
        _compare_nms(chk, name, b, s, native, cuda)
    g = torch.Generator().manual_seed(2)
    k = 100_000 if large else 5_000
    for name, groups, bound in (
            (f"random {k} over 300", torch.randint(0, 300, (k,), generator=g), 300),
            ("one group", torch.zeros(k, dtype=torch.long), 1),
            ("all distinct", torch.randperm(k, generator=g), k),
            ("sparse large ids", torch.randint(0, 10, (k,), generator=g) * 100_003, 900_028),
            ("empty", torch.zeros(0, dtype=torch.long), 0),
            ("single", torch.tensor([7]), 8)):
        _compare_group(chk, name, groups, bound, native, cuda)
    if cuda:
        _compare_i2mask(chk, 20_000)
    out.update(checks=chk.rows, failures=chk.failures)
    for r in chk.rows:
        if not r["ok"]:
            log(f"kernels: MISMATCH {r}")
    log(f"kernels: {len(chk.rows)} comparisons, {chk.failures} mismatches"
        + ("" if cuda else " (CPU native against the references)"))
    return out
