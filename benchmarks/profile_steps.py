"""Where a training step spends its time: torch.profiler over the training loops of the pipeline.

Run: .venv/bin/python benchmarks/profile_steps.py [--task detection|segmentation|occupancy|pretrain ...]
     [--dataset nuscenes|waymo] [--steps 3] [--rows 12]
Needs the pipeline's stores (`make repro`): data/zarr/<dataset>/train.zarr and, for pretrain,
data/teacher/<dataset>/train.zarr. For each task: the data time per frame (dataset item +
collate, as fine-tuning reads with num_workers 0), the training step per frame (forward,
loss, backward, AdamW; batches of 2 as params.yaml's small profile), and the profile's top
operators by self CPU time. This is the profile issue 19 asks for before optimising; the
per-task frames/s and their ratios against a previous commit are the bench_<task>.py scripts'.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import torch
import yaml
from torch.profiler import ProfilerActivity, profile

from gpicture.data.spec import dataset_spec
from gpicture.data.store import VoxelStore
from gpicture.tasks.detection.task import DetectionTask
from gpicture.tasks.occupancy import OccupancyTask
from gpicture.tasks.segmentation import SegmentationTask
from gpicture.training.pretrain import MaskConfig, build_pretrainer, masks_for_batch
from gpicture.training.pretrain_data import PretrainDataset, collate_pretrain

REPO = Path(__file__).resolve().parent.parent
BATCH = 2
FINETUNE = {"detection": DetectionTask, "segmentation": SegmentationTask, "occupancy": OccupancyTask}


def finetune_setup(name: str, dataset: str, params: dict, n: int, batch: int = BATCH):
    """(batches, step function) of a fine-tuning task on the train store, ``batch`` frames each."""
    prof = params["model"]["profiles"]["small"][dataset]
    spec, task = dataset_spec(dataset), FINETUNE[name]()
    store = REPO / "data" / "zarr" / dataset / "train.zarr"
    cfg = task.settings(params["finetune"][name], spec)
    frames = task.labelled_frames(VoxelStore.open(store), spec)
    ds = task.dataset(store, spec, list(prof["point_features"]), frames, cfg, 0)
    t = time.perf_counter()
    batches = [task.collate([ds[(batch * i + j) % len(ds)] for j in range(batch)]) for i in range(n)]
    data_ms = (time.perf_counter() - t) * 1000 / (n * batch)
    model = task.build(spec, prof, ds.attrs, cfg.head).train()
    return batches, data_ms, model, functools.partial(task.loss, model)


def pretrain_setup(dataset: str, params: dict, n: int, batch: int = BATCH):
    prof = params["model"]["profiles"]["small"][dataset]
    sec = params["pretrain"]
    ds = PretrainDataset(REPO / "data" / "zarr" / dataset / "train.zarr", REPO / "data" / "teacher" / dataset / "train.zarr")
    model = build_pretrainer(prof, ds.attrs, tuple(sec["alpha"]), int(sec["heads"]["pred_points"]),
                             tuple(sec["decoder_blocks"])).train()
    collate = functools.partial(collate_pretrain, feature_names=list(model.student.cfg.point_features),
                                voxel_size=tuple(ds.attrs["voxel_size"]),
                                point_cloud_range=tuple(ds.attrs["point_cloud_range"]),
                                max_points=int(sec["heads"]["true_points"]))
    t = time.perf_counter()
    batches = [collate([ds[(batch * i + j) % len(ds)] for j in range(batch)]) for i in range(n)]
    data_ms = (time.perf_counter() - t) * 1000 / (n * batch)
    m = sec["mask"]
    mask_cfg = MaskConfig(int(m["n_clusters"]), tuple(m["n_partition"]), float(m["lambda_threshold"]),
                          tuple(m["base_ratio"]))

    def loss(batch):
        losses = model(batch, masks_for_batch(batch, mask_cfg, 0, 0), beta=1.0)
        return losses.total, {}

    return batches, data_ms, model, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", nargs="+", default=["detection", "segmentation", "occupancy", "pretrain"],
                        choices=[*FINETUNE, "pretrain"])
    parser.add_argument("--dataset", choices=["nuscenes", "waymo"], default="nuscenes")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after one warm-up step)")
    parser.add_argument("--rows", type=int, default=12, help="operators listed per task")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    print(f"cpu, {torch.get_num_threads()} threads, batch {BATCH}, {args.dataset}, small profile")
    for name in args.task:
        n = args.steps + 1
        setup = pretrain_setup(args.dataset, params, n) if name == "pretrain" else \
            finetune_setup(name, args.dataset, params, n)
        batches, data_ms, model, loss_fn = setup
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step(batch) -> None:
            loss, _ = loss_fn(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step(batches[0])  # warm-up
        t = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for b in batches[1:]:
                step(b)
        step_ms = (time.perf_counter() - t) * 1000 / (args.steps * BATCH)
        print(f"\n== {name}: data {data_ms:.0f} ms/frame, training step {step_ms:.0f} ms/frame "
              f"({1000 / step_ms:.2f} frames/s, under the profiler)")
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:args.rows]:
            print(f"  {100 * e.self_cpu_time_total / total:5.1f} %  {e.self_cpu_time_total / 1000:8.1f} ms  "
                  f"{e.count:6d} calls  {e.key[:70]}")


if __name__ == "__main__":
    main()
