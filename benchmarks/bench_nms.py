"""Rotated BEV NMS and IoU matrix: native ops of csrc/ against the pure-torch references.

Run: .venv/bin/python benchmarks/bench_nms.py [--boxes 1000] [--threshold 0.1]
Boxes are CenterPoint-like decoder output: clusters of jittered proposals around
objects of a 100 m x 100 m scene, so that NMS has real work to do. Prints the median
time of each implementation and the speed-up ratio (CPU; CUDA too where available).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from gpicture.ops import nms_reference, rotated_iou_reference
from gpicture.ops.native import load_native


def median_ms(fn, repeat: int, sync: bool = False) -> float:
    fn()
    times = []
    for _ in range(repeat):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def make_boxes(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    objects = max(1, n // 5)
    centre = torch.rand(objects, 2, generator=gen) * 100 - 50
    dims = torch.rand(objects, 2, generator=gen) * torch.tensor(
        [4.0, 1.5]
    ) + torch.tensor([0.5, 0.5])
    heading = (torch.rand(objects, 1, generator=gen) - 0.5) * 2 * math.pi
    obj = torch.cat([centre, dims, heading], dim=1)
    owner = torch.randint(0, objects, (n,), generator=gen)
    jitter = torch.randn(n, 5, generator=gen) * torch.tensor([0.4, 0.4, 0.2, 0.1, 0.2])
    boxes = obj[owner] + jitter
    boxes[:, 2:4] = boxes[:, 2:4].clamp(min=0.1)
    scores = torch.rand(n, generator=gen)
    return boxes, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=1000)
    parser.add_argument("--threshold", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    native = load_native()
    has_native = native is not None and hasattr(native, "nms_rotated")
    boxes, scores = make_boxes(args.boxes)
    n = args.boxes
    print(
        f"rotated NMS / IoU, {n} boxes, threshold {args.threshold}, torch threads {torch.get_num_threads()}, "
        f"native={'yes' if has_native else 'NO (reference only)'}"
    )

    ref_keep = nms_reference(boxes, scores, args.threshold)
    ref_nms = median_ms(
        lambda: nms_reference(boxes, scores, args.threshold), max(1, args.repeat // 2)
    )
    ref_iou = median_ms(
        lambda: rotated_iou_reference(boxes, boxes), max(1, args.repeat // 2)
    )
    line_nms = f"  NMS        cpu  torch ref {ref_nms:10.2f} ms"
    line_iou = f"  IoU {n}x{n} cpu  torch ref {ref_iou:10.2f} ms"
    if has_native:
        keep = native.nms_rotated(boxes, scores, args.threshold)
        assert torch.equal(keep, ref_keep), "native NMS differs from the reference"
        nat_nms = median_ms(
            lambda: native.nms_rotated(boxes, scores, args.threshold), args.repeat
        )
        nat_iou = median_ms(lambda: native.rotated_iou(boxes, boxes), args.repeat)
        line_nms += f"  native {nat_nms:8.3f} ms  speed-up x{ref_nms / nat_nms:.0f}"
        line_iou += f"  native {nat_iou:8.3f} ms  speed-up x{ref_iou / nat_iou:.0f}"
    print(f"  kept {ref_keep.numel()} of {n}")
    print(line_nms)
    print(line_iou)

    if has_native and native.with_cuda and torch.cuda.is_available():
        gb, gs = boxes.cuda(), scores.cuda()
        assert torch.equal(native.nms_rotated(gb, gs, args.threshold).cpu(), ref_keep)
        ref_nms_g = median_ms(
            lambda: nms_reference(gb, gs, args.threshold),
            max(1, args.repeat // 2),
            sync=True,
        )
        ref_iou_g = median_ms(
            lambda: rotated_iou_reference(gb, gb), max(1, args.repeat // 2), sync=True
        )
        nat_nms_g = median_ms(
            lambda: native.nms_rotated(gb, gs, args.threshold), args.repeat, sync=True
        )
        nat_iou_g = median_ms(
            lambda: native.rotated_iou(gb, gb), args.repeat, sync=True
        )
        print(
            f"  NMS        cuda torch ref {ref_nms_g:10.2f} ms  native {nat_nms_g:8.3f} ms"
            f"  speed-up x{ref_nms_g / nat_nms_g:.0f}"
        )
        print(
            f"  IoU {n}x{n} cuda torch ref {ref_iou_g:10.2f} ms  native {nat_iou_g:8.3f} ms"
            f"  speed-up x{ref_iou_g / nat_iou_g:.0f}"
        )


if __name__ == "__main__":
    main()
