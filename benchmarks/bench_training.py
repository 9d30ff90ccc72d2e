"""Training and inference frames/s of every training loop, against a baseline commit.

Run: .venv/bin/python benchmarks/bench_training.py [--baseline 41ce942] [--tasks detection ...]
     [--dataset nuscenes] [--steps 4] [--rounds 2]
Needs the pipeline's stores (`make repro`): data/zarr/<dataset>/train.zarr and, for pretrain,
data/teacher/<dataset>/train.zarr.

The baseline is checked out as a temporary git worktree (removed afterwards) and each loop
runs in a child process (benchmarks/_loop_speed.py) of either tree, alternating, ``--rounds``
times each; the best round counts (the shared machine's noise only ever slows a run). Each
tree builds its loop from its own params.yaml defaults on the same stores and the same
batches of 2 frames, so the ratio is "this commit's default loop" over "the baseline's".
The default baseline, 41ce942, is the commit issue 19 started from.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TASKS = ("detection", "segmentation", "occupancy", "pretrain")


def baseline_tree(rev: str, root: Path) -> Path:
    """A worktree of ``rev`` under ``root`` with this checkout's native extension and stores."""
    tree = root / "baseline"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), rev], check=True)
    for so in (REPO / "gpicture").glob("_native*.so"):
        shutil.copy2(so, tree / "gpicture" / so.name)
    (tree / "data").mkdir(exist_ok=True)
    for sub in ("zarr", "teacher"):
        os.symlink(REPO / "data" / sub, tree / "data" / sub)
    return tree


def run(tree: Path, task: str, dataset: str, steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "_loop_speed.py"), "--tree", str(tree),
                          "--task", task, "--dataset", dataset, "--steps", str(steps)],
                         cwd=tree, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="41ce942", help="git revision to compare against")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--dataset", default="nuscenes", choices=["nuscenes", "waymo"])
    ap.add_argument("--steps", type=int, default=4, help="timed steps of 2 frames per round")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpicture-bench-") as tmp:
        base = baseline_tree(args.baseline, Path(tmp))
        try:
            print(f"{args.dataset}, batches of 2 frames, {args.steps} timed steps, best of {args.rounds} rounds; "
                  f"baseline {args.baseline}")
            print(f"{'loop':<13} {'train f/s':>9} {'base':>7} {'ratio':>6} | {'infer f/s':>9} {'base':>7} {'ratio':>6}")
            for task in args.tasks:
                best: dict[str, dict] = {}
                for _ in range(args.rounds):
                    for name, tree in (("now", REPO), ("base", base)):
                        r = run(tree, task, args.dataset, args.steps)
                        b = best.setdefault(name, r)
                        for k in ("train_fps", "infer_fps"):
                            if r[k] is not None and r[k] > b[k]:
                                b[k] = r[k]
                now, old = best["now"], best["base"]
                row = f"{task:<13} {now['train_fps']:9.2f} {old['train_fps']:7.2f} {now['train_fps'] / old['train_fps']:5.2f}x"
                if now["infer_fps"] is not None:
                    row += f" | {now['infer_fps']:9.2f} {old['infer_fps']:7.2f} {now['infer_fps'] / old['infer_fps']:5.2f}x"
                print(row, flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False)


if __name__ == "__main__":
    main()
