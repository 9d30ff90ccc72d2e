"""The pipeline's CUDA paths, measured against their references in one command (issue 21).

On the GPU machine (a copy of this tree of at most 64 MiB; that machine's own CUDA PyTorch,
nvcc, numpy and PyYAML; no venv, spconv, torch-scatter, zarr, dvc or devkit needed), from
the repository root:

    python benchmarks/gpu_check.py --out $OUT/gpu.json

(the script puts the repository root on sys.path; ``PYTHONPATH=.`` does the same). In at
most 8 minutes on one H100 / H200 (``--deadline`` seconds, 450 by default; each section
has its own budget inside it) it

1. builds csrc/ with CUDA (``scripts/build_native.py``, for the GPU's architecture only);
2. checks every CUDA kernel (rotated IoU, rotated NMS, in-group index; and I²Mask's CUDA
   path) against the native CPU kernel and the pure-torch reference, on random and
   degenerate inputs (``_gpu_kernels.py``);
3. times the student (VFE + DSVT) on the full nuScenes and Waymo profiles (params.yaml
   ``model.profiles.full``: the paper's grids, about 300k points a frame: 10 nuScenes
   sweeps, 2 Waymo scans): forward and forward + backward, fp32 and bf16 autocast, eager
   and through the engine's ``torch.compile`` (last, as time allows): ms per frame, peak
   GPU memory, achieved TFLOP/s and its fraction of the chip's dense bf16 peak;
4. runs full pre-training steps at batch 4 (I²Mask on the GPU, the 2-stage decoder over
   the 8 layers, Chamfer and teacher losses, fused AdamW, bf16) and CenterPoint detection
   steps, through the engine's ``TrainStep`` and the pipeline's own step functions, and
   reports frames/s and the host syncs of one step (``torch.cuda.set_sync_debug_mode``);
5. compares I²Mask on the GPU with scikit-learn's KMeans (the original method) on 30k x 64
   features (skipped with a line if scikit-learn is missing);

and writes every figure to ``--out`` (JSON, rewritten after each section, so a run cut
short keeps what it measured), then prints a table. Synthetic inputs come from
``benchmarks/_synthetic.py`` (the procedural world's LiDAR, no store). Whatever needs a
missing package or more time than is left is skipped with a line saying why.

Without CUDA (or with ``--cpu``) it runs the same sections' CPU fallbacks on tiny inputs (the
tiny model profile, a few thousand points a frame) in well under a minute, exits 0 and
writes the JSON with ``"device": "cpu"``; tests/test_gpu_check.py runs it so. The exit code is
1 when a kernel disagrees with its reference or a section fails. ``--table FILE`` prints the
README's GPU table from a JSON this script wrote.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # gpicture from this tree, installed or not

import torch  # noqa: E402
import yaml  # noqa: E402

import _gpu_bench as bench  # noqa: E402
from _gpu_kernels import check_kernels  # noqa: E402
from _gpu_report import goals, print_table  # noqa: E402

BUDGETS_S = {"build": 240, "kernels": 30, "student": 50, "pretrain_step": 75, "detection_step": 45, "i2mask": 40}
FULL_SWEEPS = {"nuscenes": 10, "waymo": 2}  # scans per frame: about 300k points either way


class DeadlineExceeded(BaseException):
    """The global deadline passed inside a section (SIGALRM)."""


class Check:
    """One run: the device, the inputs, the JSON being filled, and the sections' bookkeeping."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.perf_counter()
        self.cuda = torch.cuda.is_available() and not args.cpu
        self.device = torch.device("cuda", 0) if self.cuda else torch.device("cpu")
        self.params = yaml.safe_load(Path(args.params).read_text())
        self.res: dict[str, Any] = {
            "schema": "gpicture-gpu-check/1", "device": self.device.type,
            "mode": "gpu" if self.cuda else "cpu-fallback (tiny inputs: not comparable with the goals)",
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "deadline_s": args.deadline, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "sections": {}, "skipped": []}
        self._frames: dict[tuple[str, int], list] = {}

    def left(self) -> float:
        return self.args.deadline - (time.perf_counter() - self.t0)

    def log(self, line: str) -> None:
        print(line, flush=True)

    def skip(self, line: str) -> None:
        self.res["skipped"].append(line)
        self.log(f"skipped: {line}")

    def write(self) -> None:
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(self.res, indent=1, allow_nan=False, default=_plain))
        os.replace(tmp, out)

    def section(self, name: str, budget_s: float, fn: Callable[[bench.Budget], Any], min_s: float = 5.0) -> None:
        """Run ``fn`` with ``budget_s`` (never past the global deadline); record its result under
        ``name``, or why it was skipped or failed; rewrite the JSON."""
        left = self.left()
        if left < min_s:
            self.res["sections"][name] = {"status": "skipped", "reason": f"global deadline: {left:.0f} s left"}
            self.skip(f"{name}: the global deadline leaves {left:.0f} s")
            self.write()
            return
        t = time.perf_counter()
        try:
            out = fn(bench.Budget(min(budget_s, left)))
            status = {"status": "ok"}
            if out is not None:
                self.res[name] = out
        except Skip as exc:
            status = {"status": "skipped", "reason": str(exc)}
            self.skip(f"{name}: {exc}")
        except ImportError as exc:
            status = {"status": "skipped", "reason": f"a module is missing: {exc}"}
            self.skip(f"{name}: a module is missing here ({exc})")
        except DeadlineExceeded:
            status = {"status": "failed", "reason": "ran past the global deadline"}
            self.log(f"{name}: ran past the global deadline")
        except Exception as exc:  # noqa: BLE001  (one section's failure must not lose the others' figures)
            status = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()[-3000:]}
            self.log(f"{name}: FAILED {type(exc).__name__}: {exc}")
            if self.cuda:
                torch.cuda.empty_cache()
        status["wall_s"] = time.perf_counter() - t
        self.res["sections"][name] = status
        self.write()

    # ----------------------------------------------------------------------------------- inputs

    def profile(self, dataset: str) -> tuple[dict, Any]:
        """(model profile, grid): the full profile on a GPU, the tiny one on the CPU."""
        from _synthetic import TINY_GRID, TINY_MODEL

        from gpicture.data.voxelize import VoxelGrid

        if not self.cuda:
            feats = ["intensity", "time_lag"] if dataset == "nuscenes" else ["intensity", "elongation"]
            return dict(TINY_MODEL, point_features=feats), TINY_GRID
        p = self.params["model"]["profiles"]["full"][dataset]
        return p, VoxelGrid(tuple(p["point_cloud_range"]), tuple(p["voxel_size"]))

    def frames(self, dataset: str, n: int) -> list:
        """``n`` synthetic frames (seeds 0..n-1) on the profile's grid, cached."""
        from _synthetic import lidar_frame

        key = (dataset, n)
        if key not in self._frames:
            _, grid = self.profile(dataset)
            kw = {"sweeps": FULL_SWEEPS[dataset]} if self.cuda else {"sweeps": 1, "max_points": 3000}
            self._frames[key] = [lidar_frame(grid, dataset, seed=s, index=s, **kw) for s in range(n)]
        return self._frames[key]

    def section_params(self, *keys: str, dataset: str = "nuscenes") -> dict:
        from gpicture.params import with_profile

        sec: Any = self.params
        for k in keys:
            sec = sec[k]
        return with_profile(sec, "full" if self.cuda else "small", dataset)


class Skip(Exception):
    """A section that cannot run here, with the reason."""


def _plain(o: Any) -> Any:
    return str(o)


def machine(device: torch.device) -> dict:
    """The machine: GPU, torch / CUDA / cuDNN versions, Python, CPU, and the tree's commit."""
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "platform": platform.platform(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(),
                            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                            timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None  # the GPU machine's copy of the tree has no .git
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
                    gpu_memory_gib=props.total_memory / 2**30, cudnn=torch.backends.cudnn.version(),
                    bf16_peak_tflops=bench.bf16_peak(props.name), autocast=bench.autocast_dtype(device))
    else:
        info.update(gpu=None, autocast="fp32 (the engine's AMP is CUDA only)")
    return info


def build(chk: Check, budget: bench.Budget) -> dict:
    """csrc/ through scripts/build_native.py, for this GPU's architecture (TORCH_CUDA_ARCH_LIST)."""
    if not chk.cuda and not chk.args.build:
        raise Skip("CPU mode builds nothing (make setup builds csrc/ for the CPU; without it the references run)")
    if chk.args.no_build:
        raise Skip("--no-build")
    env = dict(os.environ, MAX_JOBS=str(os.cpu_count() or 4))
    if chk.cuda and "TORCH_CUDA_ARCH_LIST" not in env:
        major, minor = torch.cuda.get_device_capability(chk.device)
        env["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "build_native.py")], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=max(budget.left(), 1))
    except subprocess.TimeoutExpired:
        raise Skip(f"the build ran past its {BUDGETS_S['build']} s budget: the references run instead") from None
    text = proc.stdout + proc.stderr
    line = next((x for x in text.splitlines() if x.startswith("[build_native]")), "")
    out = {"rc": proc.returncode, "wall_s": time.perf_counter() - t, "summary": line,
           "arch_list": env.get("TORCH_CUDA_ARCH_LIST"), "tail": text[-1500:] if proc.returncode else ""}
    chk.log(f"build: rc {proc.returncode} in {out['wall_s']:.0f} s: {line}")
    if proc.returncode:
        chk.skip("build: scripts/build_native.py failed (tail in the JSON): the references run instead")
    return out


def kernels(chk: Check, budget: bench.Budget) -> dict:
    return check_kernels(large=chk.cuda, log=chk.log)


def student(chk: Check, dataset: str, compiled: bool, budget: bench.Budget) -> dict:
    from gpicture.models.student import Student, StudentConfig
    from gpicture.training.engine import to_device

    if compiled and not chk.cuda and not chk.args.compile:
        raise Skip("torch.compile is measured on CUDA only (inductor's CPU build of it takes minutes here; "
                   "--compile forces it)")
    prof, grid = chk.profile(dataset)
    frame = chk.frames(dataset, 1)
    from _synthetic import grid_attrs, voxel_batch

    torch.manual_seed(0)
    model = Student(StudentConfig.from_params(prof, grid_attrs(grid))).to(chk.device)
    batch = to_device(voxel_batch(frame, list(prof["point_features"])), chk.device)
    entry = chk.res.get(f"student_{dataset}") or {
        "profile": "full" if chk.cuda else "tiny", "points": int(len(batch.points)),
        "voxels": int(len(batch.voxel_coords)), "grid_zyx": list(grid.shape_zyx), "d_model": prof["d_model"],
        "runs": [], "flops": {}}
    peak = chk.args.peak_tflops or chk.res["machine"].get("bf16_peak_tflops")
    entry["runs"] += bench.student_runs(model, batch, chk.device, ("fp32", "bf16"), compiled, budget, entry["flops"],
                                        peak, chk.log)
    chk.res[f"student_{dataset}"] = entry
    return None


def pretrain_step(chk: Check, budget: bench.Budget) -> dict:
    from _synthetic import pretrain_batch

    prof, grid = chk.profile("nuscenes")
    sec = chk.section_params("pretrain")
    out = bench.pretrain_step(prof, sec, grid, chk.frames("nuscenes", 4), chk.device, budget, pretrain_batch)
    chk.log(f"pretrain step: {out['frames_per_s']:.2f} frames/s at batch {out['frames']} ({out['amp']})")
    return out


def detection_step(chk: Check, budget: bench.Budget) -> dict:
    from _synthetic import detection_batch

    prof, grid = chk.profile("nuscenes")
    sec = chk.section_params("finetune", "detection")
    out = bench.detection_step(prof, sec, grid, chk.frames("nuscenes", 4), chk.device, budget, detection_batch,
                               "nuscenes")
    chk.log(f"detection step: {out['frames_per_s']:.2f} frames/s at batch {out['frames']} ({out['amp']})")
    return out


def i2mask(chk: Check, budget: bench.Budget) -> dict:
    return bench.i2mask_vs_sklearn(30_000, chk.params["pretrain"]["mask"], chk.device, budget,
                                   chk.log)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("gpu-check.json"), help="the JSON of every figure")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--deadline", type=float, default=450.0, help="global budget (s) for all sections")
    ap.add_argument("--cpu", action="store_true", help="the CPU fallback even where CUDA is present")
    ap.add_argument("--build", action="store_true", help="build csrc/ in CPU mode too")
    ap.add_argument("--no-build", action="store_true", help="do not build csrc/ (use what is built)")
    ap.add_argument("--compile", action="store_true", help="measure torch.compile in CPU mode too")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the chip's dense bf16 peak, if not known")
    ap.add_argument("--table", type=Path, default=None, help="print the README table of this JSON and exit")
    args = ap.parse_args(argv)
    if args.table is not None:
        print_table(json.loads(args.table.read_text()), markdown=True)
        return 0
    chk = Check(args)
    chk.res["machine"] = machine(chk.device)
    chk.log(f"gpu_check on {chk.res['machine'].get('gpu') or 'the CPU (fallback, tiny inputs)'}, "
            f"deadline {args.deadline:.0f} s -> {args.out}")

    def alarm(*_: Any) -> None:
        raise DeadlineExceeded

    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, alarm)
        signal.alarm(int(args.deadline) + 30)  # a section stuck past the deadline is cut, the JSON still written
    try:
        chk.write()
    except OSError as exc:
        print(f"error: {args.out}: cannot write the results ({exc.strerror or exc})", file=sys.stderr)
        return 2
    chk.section("build", BUDGETS_S["build"], lambda b: build(chk, b))
    chk.section("kernels", BUDGETS_S["kernels"], lambda b: kernels(chk, b))
    for ds in ("nuscenes", "waymo"):
        chk.section(f"student_{ds}", BUDGETS_S["student"], lambda b, ds=ds: student(chk, ds, False, b))
    chk.section("pretrain_step", BUDGETS_S["pretrain_step"], lambda b: pretrain_step(chk, b))
    chk.section("detection_step", BUDGETS_S["detection_step"], lambda b: detection_step(chk, b))
    chk.section("i2mask", BUDGETS_S["i2mask"], lambda b: i2mask(chk, b))
    for i, ds in enumerate(("nuscenes", "waymo")):  # compiling is the costliest and least needed: last
        share = chk.left() / (2 - i) - 5
        chk.section(f"student_{ds}_compiled", share, lambda b, ds=ds: student(chk, ds, True, b), min_s=60.0)
    if hasattr(signal, "SIGALRM"):
        signal.alarm(0)
    chk.res["goals"] = goals(chk.res)
    chk.res["wall_s"] = time.perf_counter() - chk.t0
    chk.write()
    print()
    print_table(chk.res)
    failed = [n for n, s in chk.res["sections"].items() if s["status"] == "failed"]
    mismatches = (chk.res.get("kernels") or {}).get("failures", 0)
    if failed or mismatches:
        print(f"gpu_check: {len(failed)} failed sections {failed}, {mismatches} kernel mismatches", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
