"""Segmentation fine-tuning and inference speed on the small profile (student + spconv decoder).

Run: .venv/bin/python benchmarks/bench_segmentation.py [--dataset nuscenes|waymo] [--store PATH]
     [--synthetic] [--steps 3] [--device cpu|cuda]
Uses data/zarr/<dataset>/train.zarr when it exists (`make repro`), else (or with --synthetic)
a tiny synthetic store generated and converted in a temporary folder (slower start, same code).
Prints, per frame and in frames/s (median of --steps after one warm-up step, batches of 2):
- data: SegmentationDataset.__getitem__ (store read, augmentation, voxelization) + collate;
- training: Segmenter.loss (CE + Lovász on the labelled points) + backward + clip + AdamW on
  augmented frames (AMP on CUDA, as the training engine does);
- inference: Segmenter.predict on every segmented point (nuScenes: the keyframe's, Waymo:
  all) of un-augmented frames, in eval mode without gradients; the student's share of it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from _synthetic import synthetic_store

from gpicture.data.spec import dataset_spec
from gpicture.data.store import VoxelStore
from gpicture.models.segmentation import SegmentationBatch
from gpicture.tasks.segmentation import (
    SegmentationDataset,
    SegmentationConfig,
    SegmentationTask,
    collate_segmentation,
    labelled_frames,
)
from gpicture.training.augment import AugmentConfig

REPO = Path(__file__).resolve().parent.parent
BATCH = 2


def median_ms(fn: Callable[[int], None], steps: int, sync: bool) -> float:
    """Median wall time of fn(i) for i = 1..steps in ms, after a warm-up call fn(0)."""
    times = []
    for i in range(steps + 1):
        if sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn(i)
        if sync:
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["nuscenes", "waymo"], default="nuscenes")
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    dev = torch.device(args.device)
    sync = dev.type == "cuda"
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    prof = params["model"]["profiles"]["small"][args.dataset]
    sec = params.get("finetune", {}).get("segmentation", {})
    task, spec = SegmentationTask(), dataset_spec(args.dataset)
    settings = task.settings(sec, spec) if sec else SegmentationConfig()

    with tempfile.TemporaryDirectory(prefix="bench_segmentation_") as tmp:
        store = args.store or REPO / "data" / "zarr" / args.dataset / "train.zarr"
        if args.store is None and (args.synthetic or not store.exists()):
            print(f"generating a tiny synthetic {args.dataset} store ...", flush=True)
            store = synthetic_store(args.dataset, params, Path(tmp))
        feats = list(prof["point_features"])
        frames = labelled_frames(VoxelStore.open(store), spec)
        n = BATCH * (args.steps + 1)
        pick = [frames[i % len(frames)] for i in range(n)]
        train_ds = SegmentationDataset(store, feats, pick, settings.augment or AugmentConfig(), labelled_only=True)
        eval_ds = SegmentationDataset(store, feats, pick)

        t = time.perf_counter()
        train_batches = [collate_segmentation([train_ds[i], train_ds[i + 1]]) for i in range(0, n, BATCH)]
        data_ms = (time.perf_counter() - t) * 1000 / n
        eval_batches = [collate_segmentation([eval_ds[i], eval_ds[i + 1]]) for i in range(0, n, BATCH)]

        torch.manual_seed(0)
        seg = task.build(spec, prof, train_ds.attrs, settings.head).to(dev)
        opt = torch.optim.AdamW(seg.parameters(), lr=1e-3, weight_decay=0.01)
        use_amp = dev.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        train_dev = [b.to(dev) for b in train_batches]
        eval_dev = [b.to(dev) for b in eval_batches]

        def train_step(i: int) -> None:
            with torch.autocast(device_type="cuda", enabled=use_amp):
                loss, _ = seg.loss(train_dev[i])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(seg.parameters(), 35.0)
            scaler.step(opt)
            scaler.update()

        seg.train()
        train_ms = median_ms(train_step, args.steps, sync) / BATCH
        seg.eval()
        infer_ms = median_ms(lambda i: seg.predict(eval_dev[i]), args.steps, sync) / BATCH

        def student_only(i: int) -> None:
            b: SegmentationBatch = eval_dev[i]
            with torch.no_grad():
                seg.student.encode(b.voxels)

        student_ms = median_ms(student_only, args.steps, sync) / BATCH

    pts = statistics.mean(len(b.voxels.points) for b in eval_batches) / BATCH
    segd = statistics.mean(len(b.seg_index) for b in eval_batches) / BATCH
    lab = statistics.mean(len(b.seg_index) for b in train_batches) / BATCH
    vox = statistics.mean(len(b.voxels.voxel_coords) for b in eval_batches) / BATCH
    name = f"cuda ({torch.cuda.get_device_name(dev)}, AMP training)" if sync else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\nsegmentation benchmark: {args.dataset}, store {store}, device {name}, batch {BATCH}")
    print(f"per frame: {pts:,.0f} points, {vox:,.0f} voxels, {segd:,.0f} segmented points, {lab:,.0f} labelled")
    print(f"{'':28}{'ms/frame':>10}{'frames/s':>10}")
    for label, ms in (("data (getitem + collate)", data_ms), ("training step", train_ms),
                      ("inference (predict)", infer_ms), ("  of which the student", student_ms)):
        print(f"{label:28}{ms:10.1f}{1000 / ms:10.2f}")


if __name__ == "__main__":
    main()
