"""Child of bench_training.py: frames/s of one training loop in one source tree.

Run as: python _loop_speed.py --tree DIR --task T --dataset D --steps N
A tree whose params train with ``procs`` > 1 data-parallel processes is timed that way (its
``gpicture.training.launch``, one thread each, DDP-averaged gradients), with the same frames
in all: ``steps`` x 2 frames.
with PYTHONPATH=DIR, so that ``gpicture`` and ``benchmarks/profile_steps.py`` are those of
the tree (the current checkout or a git worktree of the baseline commit) and the model is
built from that tree's params.yaml defaults: the comparison is "this commit's default loop"
against "the baseline commit's default loop" on the same stores. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import torch
import yaml


def _procs_and_batch(params: dict, task: str) -> tuple[int, int]:
    """The tree's data-parallel processes and frames per process of the loop (a tree without
    ``procs`` trains in one process on batches of 2)."""
    if task == "pretrain":
        sec = params["pretrain"]
        return int(sec.get("procs", 1)), int(sec["batch_size"])
    ft = params["finetune"]
    return int(ft[task].get("procs", ft.get("procs", 1))), int(ft[task]["batch_size"])


def train_fps(dist, tree: Path, task: str, dataset: str, steps: int, batch: int) -> float:
    """Training frames/s of one process's loop (all processes' frames when run under launch)."""
    import profile_steps as ps  # the tree's own setup code (its benchmarks/ is on sys.path)

    params = yaml.safe_load((tree / "params.yaml").read_text())
    n = steps + 1
    setup = ps.pretrain_setup if task == "pretrain" else functools.partial(ps.finetune_setup, task)
    batches, _, model, loss_fn = setup(dataset, params, n, batch) if batch != ps.BATCH else setup(dataset, params, n)
    if dist.world_size > 1 and isinstance(loss_fn, functools.partial):
        # fine-tuning: task.loss(model, batch) through DDP (gradients averaged each step). The
        # pre-training loss closure holds the bare model: its ranks skip the gradient all-reduce
        # (1.3M float32 over gloo, a few ms a step), so its figure is a little optimistic.
        model = torch.nn.parallel.DistributedDataParallel(model)
        loss_fn = functools.partial(loss_fn.func, model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(b) -> None:
        loss, _ = loss_fn(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(batches[0])  # warm-up
    if dist.world_size > 1:
        torch.distributed.barrier()
    t = time.perf_counter()
    for b in batches[1:]:
        step(b)
    if dist.world_size > 1:
        torch.distributed.barrier()
    return batch * steps * dist.world_size / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", type=Path, required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--dataset", default="nuscenes")
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    sys.path.insert(0, str(args.tree / "benchmarks"))
    import profile_steps as ps  # the tree's own setup code

    params = yaml.safe_load((args.tree / "params.yaml").read_text())
    procs, batch = _procs_and_batch(params, args.task)
    if procs > 1:
        from gpicture.training.launch import launch  # only in trees that have it (procs > 1)

        fps = launch(train_fps, (args.tree, args.task, args.dataset, args.steps * ps.BATCH // (batch * procs), batch),
                     procs)
    else:
        from gpicture.training.engine import DistInfo

        fps = train_fps(DistInfo(), args.tree, args.task, args.dataset, args.steps, batch)
    infer_fps = None
    if args.task != "pretrain":  # inference: one process, batches of 2 (evaluate.<task>.batch_size)
        batches, _, model, _ = ps.finetune_setup(args.task, args.dataset, params, args.steps + 1)
        task = ps.FINETUNE[args.task]()
        model.eval()
        ids = [str(i) for i in range(ps.BATCH)]
        with torch.no_grad():
            task.infer(model, batches[0], ids)
            t = time.perf_counter()
            for b in batches[1:]:
                task.infer(model, b, ids)
        infer_fps = ps.BATCH * args.steps / (time.perf_counter() - t)
    print(json.dumps({"task": args.task, "procs": procs, "batch": batch, "train_fps": fps, "infer_fps": infer_fps}))


if __name__ == "__main__":
    main()
