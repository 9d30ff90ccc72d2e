"""Occupancy fine-tuning and inference speed on the small profile (student + BEV occupancy head).

Run: .venv/bin/python benchmarks/bench_occupancy.py [--dataset nuscenes|waymo] [--store PATH]
     [--steps 3] [--voxel-size 0.8] [--device cpu|cuda]
Uses data/zarr/<dataset>/train.zarr when it exists (`make repro`), else (or with --synthetic) a
tiny synthetic store generated and converted in a temporary folder (slower start, same code).
The occupancy grid is the OpenOccupancy range at --voxel-size (nuScenes; Waymo: the same x/y
range, z -2..4.4 m). Prints, per frame and in frames/s (batches of 2 frames):
- data: OccupancyDataset.__getitem__ (store read, ground truth on the grid, flips, voxelization)
  and collate;
- training: Occupier forward + weighted CE + backward + clip + AdamW (AMP on CUDA), median of
  --steps after 1 warm-up step; the head alone (BEV trunk + channel-to-height) is timed too, so
  its share of the step is visible;
- inference: Occupier.predict in eval mode, median of --steps batches.
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
from gpicture.models.occupancy import OccupancyBatch
from gpicture.tasks.occupancy import OccupancyDataset, OccupancyTask, collate_occupancy

REPO = Path(__file__).resolve().parent.parent
BATCH = 2
RANGES = {"nuscenes": [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0], "waymo": [-51.2, -51.2, -2.0, 51.2, 51.2, 4.4]}


def median_s(fn: Callable[[], None], steps: int, device: torch.device) -> float:
    """Median seconds of ``fn`` over ``steps`` calls after one warm-up call."""
    fn()
    ts = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["nuscenes", "waymo"], default="nuscenes")
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--voxel-size", type=float, default=0.8, help="occupancy voxel (m)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    model_params = params["model"]["profiles"]["small"][args.dataset]
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or REPO / "data" / "zarr" / args.dataset / "train.zarr"
        if args.synthetic or not store.exists():
            print(f"generating a synthetic {args.dataset} store ...")
            store = synthetic_store(args.dataset, params, Path(tmp), occupancy=True, frames=6 if args.dataset == "waymo" else 4)
        task, spec = OccupancyTask(), dataset_spec(args.dataset)
        settings = task.settings(
            {"grid": {args.dataset: {"point_cloud_range": RANGES[args.dataset], "voxel_size": args.voxel_size}},
             "augment": {"flip_x": True, "flip_y": True}}, spec)
        ds = OccupancyDataset(store, list(model_params["point_features"]), settings.head.grid, augment=True,
                              flip_x=True, flip_y=True)
        if len(ds) < BATCH:
            raise SystemExit(f"{store}: {len(ds)} frames with ground truth, need {BATCH}")
        n_items = BATCH * (args.steps + 1)
        ds[0]
        t = time.perf_counter()
        items = [ds[i % len(ds)] for i in range(n_items)]
        t_item = (time.perf_counter() - t) / n_items
        t = time.perf_counter()
        batches = [collate_occupancy(items[i:i + BATCH]) for i in range(0, n_items, BATCH)]
        t_collate = (time.perf_counter() - t) / n_items
        batches = [b.to(device) for b in batches]
        torch.manual_seed(0)
        model = task.build(spec, model_params, VoxelStore.open(store).attrs, settings.head).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        use_amp = device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        state = {"i": 0}

        def next_batch() -> OccupancyBatch:
            state["i"] += 1
            return batches[state["i"] % len(batches)]

        def train_step() -> None:
            with torch.autocast(device_type="cuda", enabled=use_amp):
                loss, _ = model.loss(next_batch())
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
            scaler.step(opt)
            scaler.update()

        model.train()
        t_train = median_s(train_step, args.steps, device)
        with torch.no_grad():
            out = model.student.encode(batches[0].voxels)
            bev = model.student.bev(out, BATCH)
        feats = bev.detach().requires_grad_(True)

        def head_step() -> None:
            x = model.trunk(feats)
            x = torch.nn.functional.grid_sample(x, model.sample_grid.expand(BATCH, -1, -1, -1), align_corners=False)
            model.head(x).float().logsumexp(1).mean().backward()

        t_head = median_s(head_step, args.steps, device)
        model.eval()

        def infer() -> None:
            model.predict(next_batch())

        t_infer = median_s(infer, args.steps, device)
    nz, ny, nx = settings.head.grid.shape_zyx
    print(f"occupancy benchmark: {args.dataset}, store {store if not args.synthetic else 'synthetic'}, "
          f"device {device}, threads {torch.get_num_threads()}, grid {nx}x{ny}x{nz} at {args.voxel_size} m, "
          f"batch {BATCH}, {len(ds)} frames with ground truth")
    print(f"data       {1e3 * t_item:8.1f} ms/frame  (getitem)  + {1e3 * t_collate:.1f} ms/frame (collate)")
    print(f"training   {BATCH / t_train:8.2f} frames/s  ({1e3 * t_train / BATCH:.0f} ms/frame; head fwd+bwd "
          f"{1e3 * t_head / BATCH:.0f} ms/frame = {t_head / t_train:.0%} of a step)")
    print(f"inference  {BATCH / t_infer:8.2f} frames/s  ({1e3 * t_infer / BATCH:.0f} ms/frame)")


if __name__ == "__main__":
    main()
