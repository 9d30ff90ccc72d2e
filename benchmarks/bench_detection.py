"""Detection fine-tuning speed on the small profile (student + CenterPoint head).

Run: .venv/bin/python benchmarks/bench_detection.py [--dataset nuscenes|waymo] [--store PATH]
     [--steps 3] [--device cpu|cuda]
Uses data/zarr/<dataset>/train.zarr when it exists (`make repro`), else (or with --synthetic)
a tiny synthetic store generated and converted in a temporary folder (slower start, same code).
Prints, per frame and in frames/s:
- data loading: DetectionDataset.__getitem__ (store read, augmentation, voxelization) and
  collate_detection, as fine-tuning runs them (num_workers 0);
- training: Detector forward + loss + backward + clip + AdamW on batches of 2 augmented
  frames (AMP on CUDA, as the training engine does), median of --steps after 1 warm-up step;
- inference: Detector.detect (forward, heatmap decoding, rotated NMS per task) in eval
  mode without gradients, on batches of 2 un-augmented frames; decoding + NMS alone too;
- rotated NMS of 1,000 CenterPoint-like boxes (benchmarks/bench_nms.py's boxes): the op
  that decoding uses (native when built) against the pure-torch reference.
The model is freshly initialised (trained for the few timed steps only), so the number of
boxes reaching NMS in decoding is not that of a trained detector.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from _synthetic import synthetic_store

from gpicture.data.spec import dataset_spec
from gpicture.models.detection.model import DetectionBatch, Detector
from gpicture.models.student import Student, StudentConfig
from gpicture.ops import nms_reference, nms_rotated
from gpicture.ops.native import load_native
from gpicture.tasks.detection.data import (
    DetectionDataset,
    DetectionItem,
    collate_detection,
)
from gpicture.training.augment import AugmentConfig

REPO = Path(__file__).resolve().parent.parent
BATCH = 2  # frames per training / inference batch
NMS_BOXES = 1000
NMS_THRESHOLD = 0.2  # CenterPoint.decode's default


def bench_nms_module():
    """benchmarks/bench_nms.py (its box generator and timing helper)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import bench_nms

    return bench_nms


def timed_items(ds: DetectionDataset, n: int) -> tuple[list[DetectionItem], list[float]]:
    """n items (cycling over the store) and the seconds each __getitem__ took (one warm-up first)."""
    ds[0]  # opens the store
    items, ts = [], []
    for i in range(n):
        t = time.perf_counter()
        items.append(ds[i % len(ds)])
        ts.append(time.perf_counter() - t)
    return items, ts


def collate_all(items: list[DetectionItem]) -> tuple[list[DetectionBatch], list[float]]:
    batches, ts = [], []
    for i in range(0, len(items) - BATCH + 1, BATCH):
        t = time.perf_counter()
        batches.append(collate_detection(items[i:i + BATCH]))
        ts.append(time.perf_counter() - t)
    return batches, ts


def cycling(batches: list[DetectionBatch], fn: Callable[[DetectionBatch], object]) -> Callable[[], None]:
    """A no-argument callable running fn on the next batch each call (for bench_nms.median_ms)."""
    state = {"i": 0}

    def call() -> None:
        fn(batches[state["i"] % len(batches)])
        state["i"] += 1

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["nuscenes", "waymo"], default="nuscenes")
    parser.add_argument("--store", type=Path, default=None,
                        help="voxel store (default data/zarr/<dataset>/train.zarr, else a synthetic one)")
    parser.add_argument("--synthetic", action="store_true",
                        help="use a generated tiny store even when data/zarr/<dataset>/train.zarr exists")
    parser.add_argument("--steps", type=int, default=3, help="timed steps / batches (after 1 warm-up)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--score-threshold", type=float, default=0.1, help="Detector.detect's score threshold")
    parser.add_argument("--no-reference", action="store_true", help="skip the pure-torch NMS reference (~2 s on CPU)")
    args = parser.parse_args()
    if args.store is not None and args.synthetic:
        parser.error("--store and --synthetic exclude each other")
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    t_start = time.perf_counter()
    dev = torch.device(args.device)
    sync = dev.type == "cuda"
    bn = bench_nms_module()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    prof = params["model"]["profiles"]["small"][args.dataset]

    with tempfile.TemporaryDirectory(prefix="bench_detection_") as tmp:
        store = args.store or REPO / "data" / "zarr" / args.dataset / "train.zarr"
        if args.store is None and (args.synthetic or not store.exists()):
            why = "--synthetic" if args.synthetic else f"{store} not found"
            print(f"{why}: generating a tiny synthetic {args.dataset} store ...", flush=True)
            t = time.perf_counter()
            store = synthetic_store(args.dataset, params, Path(tmp))
            print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
        elif not store.exists():
            parser.error(f"--store {store} does not exist")

        spec = dataset_spec(args.dataset)
        tasks, cmap = [list(g) for g in spec.detection_groups], spec.detection_class_map()
        names = [n for t in tasks for n in t]
        feats = list(prof["point_features"])
        train_ds = DetectionDataset(store, feats, names, cmap, augment_cfg=AugmentConfig())
        eval_ds = DetectionDataset(store, feats, names, cmap, augment_cfg=None)
        n_frames = BATCH * (args.steps + 1)

        # (d) data loading
        train_items, t_get_aug = timed_items(train_ds, n_frames)
        eval_items, t_get = timed_items(eval_ds, n_frames)
        train_batches, t_coll = collate_all(train_items)
        eval_batches, _ = collate_all(eval_items)
        get_aug_ms = statistics.median(t_get_aug) * 1000
        get_ms = statistics.median(t_get) * 1000
        coll_ms = statistics.median(t_coll) * 1000 / BATCH

        # (a) training
        torch.manual_seed(0)
        stride = int(params["finetune"]["detection"].get("head_stride", 1))
        det = Detector(Student(StudentConfig.from_params(prof, train_ds.attrs)), tasks, stride).to(dev)
        n_params = sum(p.numel() for p in det.parameters())
        opt = torch.optim.AdamW(det.parameters(), lr=1e-3, weight_decay=0.01)
        use_amp = dev.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        train_dev = [b.to(dev) for b in train_batches]

        def train_step(b: DetectionBatch) -> None:
            with torch.autocast(device_type="cuda", enabled=use_amp):
                loss, _ = det.loss(b)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(det.parameters(), 35.0)
            scaler.step(opt)
            scaler.update()

        det.train()
        if sync:
            torch.cuda.reset_peak_memory_stats()
        train_ms = bn.median_ms(cycling(train_dev, train_step), args.steps, sync=sync) / BATCH
        train_mem = torch.cuda.max_memory_allocated() / 2**20 if sync else None

        # (b) inference
        det.eval()
        eval_dev = [b.to(dev) for b in eval_batches]
        n_det: list[float] = []

        def detect(b: DetectionBatch) -> None:
            out = det.detect(b.voxels, score_threshold=args.score_threshold)
            n_det.append(sum(len(d.scores) for d in out) / len(out))

        detect_ms = bn.median_ms(cycling(eval_dev, detect), args.steps, sync=sync) / BATCH
        parts: dict[str, list[float]] = {"backbone": [], "head": []}

        def forward_parts(b: DetectionBatch) -> None:
            t = time.perf_counter()
            bev = det.student.bev(det.student.encode(b.voxels), b.batch_size)
            if sync:
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            det.head(bev)
            if sync:
                torch.cuda.synchronize()
            parts["backbone"].append(t1 - t)
            parts["head"].append(time.perf_counter() - t1)

        with torch.no_grad():
            fwd_ms = bn.median_ms(cycling(eval_dev, forward_parts), args.steps, sync=sync) / BATCH
            backbone_ms, head_ms = (statistics.median(parts[k][1:]) * 1000 / BATCH for k in ("backbone", "head"))
            head_out = [det(b.voxels) for b in eval_dev]
            k = {"i": 0}

            def decode() -> None:
                det.head.decode(head_out[k["i"] % len(head_out)], score_threshold=args.score_threshold)
                k["i"] += 1

            decode_ms = bn.median_ms(decode, max(args.steps, 5), sync=sync) / BATCH

        # (c) rotated NMS of 1,000 boxes
        boxes, scores = bn.make_boxes(NMS_BOXES)
        boxes, scores = boxes.to(dev), scores.to(dev)
        native = load_native()
        nms_impl = "native" if native is not None and hasattr(native, "nms_rotated") and (
            dev.type == "cpu" or native.with_cuda) else "torch reference (native op not built for this device)"
        keep = nms_rotated(boxes, scores, NMS_THRESHOLD)
        nms_ms = bn.median_ms(lambda: nms_rotated(boxes, scores, NMS_THRESHOLD), 7, sync=sync)
        ref_ms = same = None
        if not args.no_reference and nms_impl == "native":
            # one warm-up and one timed run: the reference loops in Python over the kept boxes
            ref_ms = bn.median_ms(lambda: nms_reference(boxes, scores, NMS_THRESHOLD), 1, sync=sync)
            same = torch.equal(nms_reference(boxes, scores, NMS_THRESHOLD).cpu(), keep.cpu())

    # the report
    pts = np.mean([len(it.voxels.points) for it in train_items])
    vox = np.mean([len(it.voxels.coords) for it in train_items])
    vox_eval = np.mean([len(it.voxels.coords) for it in eval_items])
    nbox = np.mean([len(it.boxes) for it in train_items])
    if dev.type == "cuda":
        dev_name = f"cuda ({torch.cuda.get_device_name(dev)}, AMP for training)"
    else:
        dev_name = f"cpu ({torch.get_num_threads()} threads)"
    nz, ny, nx = train_ds.attrs["grid_shape_zyx"]
    fps = lambda ms: f"{1000 / ms:9.2f}" if ms > 0 else f"{'-':>9}"
    print(f"\ndetection fine-tuning benchmark: {args.dataset}, store {store} ({len(train_ds)} frames)")
    print(f"device {dev_name}, torch {torch.__version__}")
    print(f"model: small profile (d_model {prof['d_model']}, set {prof['set_size']}), grid {nx}x{ny}x{nz}, "
          f"{len(names)} classes in {len(tasks)} heads (stride {stride}), {n_params / 1e6:.2f} M parameters")
    print(f"frames: {pts:,.0f} points, {vox:,.0f} voxels ({vox_eval:,.0f} un-augmented), {nbox:.1f} labelled boxes "
          f"per frame (mean of {n_frames}); batches of {BATCH}, median of {args.steps} after 1 warm-up\n")
    rows = [
        ("data: __getitem__ with augmentation", get_aug_ms),
        ("data: __getitem__ without augmentation", get_ms),
        ("data: collate_detection", coll_ms),
        ("data: train loading (aug + collate)", get_aug_ms + coll_ms),
        ("train: fwd + loss + bwd + AdamW", train_ms),
        ("inference: forward only", fwd_ms),
        ("  of which student (VFE + DSVT + BEV)", backbone_ms),
        ("  of which CenterPoint trunk + heads", head_ms),
        ("inference: detect (fwd + decode + NMS)", detect_ms),
        ("inference: decode + NMS alone", decode_ms),
    ]
    print(f"{'stage':42s} {'ms/frame':>10s} {'frames/s':>9s}")
    for name, ms in rows:
        print(f"{name:42s} {ms:10.1f} {fps(ms)}")
    print(f"\ndetections per frame after NMS (score > {args.score_threshold}): {np.mean(n_det):.0f}")
    if train_mem is not None:
        print(f"peak CUDA memory in training: {train_mem:,.0f} MiB")
    line = f"rotated NMS, {NMS_BOXES} boxes, IoU > {NMS_THRESHOLD}, {dev.type}: {nms_impl} {nms_ms:.3f} ms, kept {len(keep)}"
    if ref_ms is not None:
        line += f"; torch reference {ref_ms:.0f} ms (x{ref_ms / nms_ms:.0f}), same kept boxes: {'yes' if same else 'NO'}"
    print(line)
    print(f"total benchmark time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
