"""Child of bench_training.py: frames/s of one training loop in one source tree.

Run as: python _loop_speed.py --tree DIR --task T --dataset D --steps N
with PYTHONPATH=DIR, so that ``gpicture`` and ``benchmarks/profile_steps.py`` are those of
the tree (the current checkout or a git worktree of the baseline commit) and the model is
built from that tree's params.yaml defaults: the comparison is "this commit's default loop"
against "the baseline commit's default loop" on the same stores. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml


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
    n = args.steps + 1
    if args.task == "pretrain":
        batches, _, model, loss_fn = ps.pretrain_setup(args.dataset, params, n)
        task = None
    else:
        batches, _, model, loss_fn = ps.finetune_setup(args.task, args.dataset, params, n)
        task = ps.FINETUNE[args.task]()
    frames = ps.BATCH * args.steps
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(b) -> None:
        loss, _ = loss_fn(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(batches[0])  # warm-up
    t = time.perf_counter()
    for b in batches[1:]:
        step(b)
    train_fps = frames / (time.perf_counter() - t)
    infer_fps = None
    if task is not None:
        model.eval()
        ids = [str(i) for i in range(ps.BATCH)]
        with torch.no_grad():
            task.infer(model, batches[0], ids)
            t = time.perf_counter()
            for b in batches[1:]:
                task.infer(model, b, ids)
        infer_fps = frames / (time.perf_counter() - t)
    print(json.dumps({"task": args.task, "train_fps": train_fps, "infer_fps": infer_fps}))


if __name__ == "__main__":
    main()
