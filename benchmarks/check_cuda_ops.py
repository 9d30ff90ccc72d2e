"""Parity of the CUDA native ops with their CPU versions — run on a machine with a GPU.

Run: .venv/bin/python benchmarks/check_cuda_ops.py
(CI has no GPU, so this is not part of the test suite; it exits 1 on any mismatch and
says plainly when no CUDA build or device is present.)
"""

from __future__ import annotations

import sys

import torch

from gpicture.ops.native import load_native


def random_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 40
    wh = torch.rand(n, 2, generator=g) * 4 + 0.2
    wh[:: 17] = 0.0  # degenerate boxes
    yaw = (torch.rand(n, 1, generator=g) - 0.5) * 6.3
    return torch.cat([xy, wh, yaw], 1), torch.rand(n, generator=g)


def main() -> int:
    native = load_native()
    if native is None or not native.with_cuda or not torch.cuda.is_available():
        print("no CUDA build of gpicture._native or no CUDA device: nothing checked")
        return 0
    failures = 0
    boxes, scores = random_boxes(2000, 0)
    cpu = native.rotated_iou(boxes, boxes[:500])
    gpu = native.rotated_iou(boxes.cuda(), boxes[:500].cuda()).cpu()
    ok = torch.allclose(gpu, cpu, atol=1e-9)
    failures += not ok
    print(f"rotated_iou 2000x500: cuda == cpu: {ok}")
    for thr in (0.0, 0.2, 0.7, -0.5):
        same = torch.equal(native.nms_rotated(boxes.cuda(), scores.cuda(), thr).cpu(), native.nms_rotated(boxes, scores, thr))
        failures += not same
        print(f"nms_rotated threshold {thr}: cuda == cpu: {same}")
    from gpicture.models.i2mask import i2mask

    feats = torch.randn(20_000, 64, generator=torch.Generator().manual_seed(0))
    cpu_m = i2mask(feats, generator=torch.Generator().manual_seed(3))
    gpu_m = i2mask(feats.cuda(), generator=torch.Generator().manual_seed(3))
    same = gpu_m.mask.is_cuda and gpu_m.partition == cpu_m.partition and torch.allclose(
        gpu_m.cluster_ratio.cpu(), cpu_m.cluster_ratio, atol=1e-5)
    failures += not same
    print(f"i2mask 20k x 64: cuda partition and ratios == cpu: {same}")
    groups = torch.randint(0, 300, (100_000,))
    same = torch.equal(native.in_group_index(groups.cuda(), 300).cpu(), native.in_group_index(groups, 300))
    failures += not same
    print(f"in_group_index 100k: cuda == cpu: {same}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
