"""The measurements of ``gpu_check.py``: the student, the two training steps, I²Mask, host syncs.

Everything runs through the pipeline's own modules: the student is ``gpicture.models.student``,
the training steps are :class:`gpicture.training.step.TrainStep` (the engine's step) driving
``gpicture.training.pretrain._step`` (I²Mask on the batch's device, the pre-trainer's losses) and
``gpicture.training.finetune._step`` (``DetectionTask.loss``), batches are pinned and copied as
``fit`` does (:class:`~gpicture.training.engine.Pinned`, :func:`~gpicture.training.engine.to_device`),
and ``torch.compile`` is the engine's :func:`~gpicture.training.step.compile_model`. Times are wall
clock around device-synchronised calls (the step itself reads sizes back, so wall time is the
cost), medians of the timed repetitions after a warm-up; FLOPs come from
``torch.utils.flop_counter.FlopCounterMode`` on the eager fp32 model.
"""

from __future__ import annotations

import collections
import copy
import functools
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from gpicture.models.i2mask import i2mask
from gpicture.training import finetune, pretrain
from gpicture.training.engine import Pinned, StepContext, to_device
from gpicture.training.step import TrainStep, amp_dtype, compile_model

REPO = Path(__file__).resolve().parent.parent
# Dense bf16 tensor-core peaks (TFLOP/s, the vendors' datasheets, no sparsity), by device-name substring.
PEAK_BF16_TFLOPS = (("GH200", 989.4), ("H200", 989.4), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.4),
                    ("A100", 312.0), ("L40S", 362.1), ("A10G", 70.0))


class Budget:
    """Seconds left for one section (never past the global deadline)."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def bf16_peak(name: str | None) -> float | None:
    """The dense bf16 peak (TFLOP/s) of a GPU named ``name``, None when unknown."""
    return next((p for key, p in PEAK_BF16_TFLOPS if name and key in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, budget: Budget, reps: int = 5) -> tuple[float, float, int]:
    """(first call s, median s of up to ``reps`` further calls, their count): the first call
    (warm-up: allocations, handles, compilation) is timed apart; at least one timed call."""
    t = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t
    ts: list[float] = []
    while len(ts) < reps and (not ts or budget.left() > 2 * ts[-1]):
        t = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t)
    return first, statistics.median(ts), len(ts)


def peak_mib(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Peak GPU memory (MiB, allocated tensors, weights and inputs included) during ``fn``."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def count_flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def count_syncs(fn: Callable[[], Any], device: torch.device) -> dict:
    """Host syncs during ``fn`` from ``torch.cuda.set_sync_debug_mode("warn")``, by file:line of
    the Python call that made them. Syncs in the autograd engine's thread (backward) print to
    stderr instead of warning, so they are not counted here."""
    if device.type != "cuda":
        return {"counted": False, "reason": "no CUDA device: host syncs are a CUDA notion (the CPU runs in order)"}
    _sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    where = collections.Counter()
    for w in caught:
        if "synchroniz" in str(w.message):
            path = Path(w.filename)
            name = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name
            where[f"{name}:{w.lineno}"] += 1
    engine = sum(n for k, n in where.items() if k.startswith(("gpicture/training/step.py", "gpicture/training/engine.py")))
    by_file = collections.Counter()
    for k, n in where.items():
        by_file[k.rsplit(":", 1)[0]] += n
    return {"counted": True, "total": sum(where.values()), "engine": engine, "by_file": dict(by_file.most_common()),
            "top_lines": dict(where.most_common(12))}


def student_runs(student: torch.nn.Module, batch: Any, device: torch.device, precisions: tuple[str, ...],
                 compiled: bool, budget: Budget, flops: dict[str, int], peak: float | None,
                 log: Callable[[str], None]) -> list[dict]:
    """ms per frame (the batch is one frame), peak memory and achieved TFLOP/s of the student's
    forward (eval, no grad) and forward + backward (train mode, a loss over every layer's
    activations) for each precision (fp32; bf16 = autocast), eager or through compile_model."""
    model = copy.deepcopy(student) if compiled else student
    if compiled:
        compile_model(model)
    args = (batch.points, batch.features, batch.point_voxel, batch.voxel_coords)
    runs = []
    # compiled: the bf16 variants first (each variant compiles anew; the budget may end the list)
    order = [(m, p) for p in (sorted(precisions) if compiled else precisions) for m in ("forward", "forward_backward")]
    for mode, prec in order if compiled else sorted(order, key=lambda mp: mp[0] != "forward"):
        tag = f"{mode} {prec}{' compiled' if compiled else ''}"
        need = 90.0 if compiled else 5.0
        if budget.left() < need:
            log(f"student: {tag} skipped: {budget.left():.0f} s left in the section's budget (needs ~{need:.0f})")
            continue
        dtype = torch.bfloat16 if prec == "bf16" else None

        def run(mode: str = mode, dtype: torch.dtype | None = dtype) -> None:
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                if mode == "forward":
                    model.eval()
                    with torch.no_grad():
                        model(*args)
                    return
                model.train()
                out = model(*args)
                loss = out.features.float().mean() + sum(a.float().mean() for a in out.activations)
            loss.backward()
            model.zero_grad(set_to_none=True)

        row = {"mode": mode, "precision": prec, "compiled": compiled}
        try:
            first, med, n = timed(run, device, budget)
            if mode not in flops and not compiled:
                flops[mode] = count_flops(run)
            row.update(ms_per_frame=med * 1e3, reps=n, first_call_s=first, peak_mib=peak_mib(run, device))
        except Exception as exc:  # noqa: BLE001  (one variant's failure, an OOM say, keeps the others)
            row["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
            runs.append(row)
            log(f"student: {tag} FAILED {row['error']}")
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        if mode in flops:
            tf = flops[mode] / med / 1e12
            row.update(gflop=flops[mode] / 1e9, tflops=tf, bf16_peak_fraction=tf / peak if peak else None)
        runs.append(row)
        log(f"student: {tag}: {med * 1e3:.1f} ms/frame (first call {first:.1f} s)")
    return runs


def train_step(model: torch.nn.Module, batch_host: Any, step_fn: Callable, sec: dict[str, Any], device: torch.device,
               budget: Budget, epoch_state: dict[str, float], steps: int = 4) -> dict:
    """:func:`_train_step` with AMP as ``sec["amp"]``; where AMP fails on the GPU (a dtype
    mismatch inside the model, say), the error is recorded and the step timed in fp32."""
    amp = bool(sec.get("amp", True))
    try:
        return _train_step(model, batch_host, step_fn, sec, device, budget, epoch_state, steps, amp)
    except torch.cuda.OutOfMemoryError:
        raise
    except RuntimeError as exc:
        if not (amp and device.type == "cuda"):
            raise
        error = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
    model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    out = _train_step(model, batch_host, step_fn, sec, device, budget, epoch_state, steps, False)
    out["amp_error"] = error
    return out


def _train_step(model: torch.nn.Module, batch_host: Any, step_fn: Callable, sec: dict[str, Any],
                device: torch.device, budget: Budget, epoch_state: dict[str, float], steps: int, amp: bool) -> dict:
    """frames/s of ``steps`` training steps of :class:`TrainStep` with the section's optimiser
    settings, each copying the pinned batch to the device as ``fit`` does; then one more step
    under the sync counter. The first step is the warm-up."""
    model = model.to(device)
    frames = len(batch_host.voxels.frame_index)
    host = Pinned(batch_host).pin_memory().batch if device.type == "cuda" else batch_host
    trainer = TrainStep(model, float(sec["lr"]), float(sec["weight_decay"]), tuple(sec["moms"]),
                        float(sec["pct_start"]), float(sec["div_factor"]), float(sec["grad_clip"]), 1000, device,
                        amp=amp, window=steps + 2)
    index = batch_host.voxels.frame_index.tolist()

    def one(k: int) -> None:
        ctx = StepContext(epoch=2, step=k, epoch_state=epoch_state, device=device)
        trainer.step(step_fn, to_device(host, device), ctx, f"gpu_check step {k}", index)

    t = time.perf_counter()
    one(0)
    trainer.sync()
    _sync(device)
    warm = time.perf_counter() - t
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    done, reads = 0, trainer.host_syncs
    t = time.perf_counter()
    while done < steps and (done == 0 or budget.left() > 2 * (time.perf_counter() - t) / done):
        done += 1
        one(done)
    report = trainer.sync()
    _sync(device)
    dt = time.perf_counter() - t
    out = {"frames": frames, "voxels": int(len(batch_host.voxels.voxel_coords)),
           "points": int(len(batch_host.voxels.points)), "steps": done, "warmup_s": warm, "s_per_step": dt / done,
           "frames_per_s": frames * done / dt, "loss": report.loss,
           "amp": str(trainer.dtype).replace("torch.", "") if trainer.dtype else "fp32",
           "engine_host_reads": trainer.host_syncs - reads,
           "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}
    out["syncs"] = count_syncs(lambda: one(done + 1), device)
    trainer.sync()
    return out


def pretrain_step(model_params: dict, sec: dict, grid: Any, frames: list, device: torch.device, budget: Budget,
                  pretrain_batch: Callable) -> dict:
    """A GPICTURE pre-training step: I²Mask on the device, encoder, the decoder over the 8
    layers' copies, Chamfer + teacher losses (beta 0.5: both), AdamW; at a smaller batch when
    ``frames`` do not fit in memory (recorded)."""
    m = sec["mask"]
    mask = pretrain.MaskConfig(int(m["n_clusters"]), tuple(m["n_partition"]), float(m["lambda_threshold"]),
                               tuple(m["base_ratio"]))
    step_fn = functools.partial(pretrain._step, mask_cfg=mask, seed=0)

    def build(fr: list) -> tuple[torch.nn.Module, Any]:
        torch.manual_seed(0)
        return (pretrain.build_pretrainer(model_params, _attrs(grid), tuple(sec["alpha"]),
                                          int(sec["heads"]["pred_points"]), tuple(sec["decoder_blocks"])),
                pretrain_batch(fr, list(model_params["point_features"]), grid,
                               true_points=int(sec["heads"]["true_points"])))

    out, batch = _fitting(frames, build, lambda model, b: train_step(model, b, step_fn, sec, device, budget,
                                                                     {"beta": 0.5}), device)
    dev_batch = batch.to(device)
    _, med, _ = timed(lambda: pretrain.masks_for_batch(dev_batch, mask, 0, 2), device, budget, reps=3)
    out["i2mask_ms_per_batch"] = med * 1e3
    out["decoder_blocks"] = list(sec["decoder_blocks"])
    return out


def detection_step(model_params: dict, sec: dict, grid: Any, frames: list, device: torch.device, budget: Budget,
                   detection_batch: Callable, dataset: str) -> dict:
    """A CenterPoint fine-tuning step (student, BEV trunk, heads, focal + regression losses,
    AdamW) through ``DetectionTask`` as ``gpicture finetune --task detection`` builds it."""
    from gpicture.data.spec import dataset_spec  # lazy: a missing dependency skips this section only
    from gpicture.tasks.detection.task import DetectionHead, DetectionTask  # lazy: as above

    head = DetectionHead.from_dict({"head_stride": sec.get("head_stride", 1), "head": sec.get("head") or {}})
    task = DetectionTask()

    def build(fr: list) -> tuple[torch.nn.Module, Any]:
        torch.manual_seed(0)
        model = task.build(dataset_spec(dataset), model_params, _attrs(grid), head)
        return model, detection_batch(fr, list(model_params["point_features"]), [n for t in model.head.tasks for n in t])

    step_fn = functools.partial(finetune._step, task=task)
    out, batch = _fitting(frames, build, lambda model, b: train_step(model, b, step_fn, sec, device, budget, {}),
                          device)
    out.update(boxes=int(sum(len(b) for b in batch.boxes)), head_stride=head.head_stride, trunk=head.head.trunk)
    return out


def _fitting(frames: list, build: Callable[[list], tuple[torch.nn.Module, Any]],
             run: Callable[[torch.nn.Module, Any], dict], device: torch.device) -> tuple[dict, Any]:
    """``run(model, batch)`` at the batch of all ``frames``, halved while the GPU runs out of
    memory; (figures with ``oom_at`` listing the batch sizes that did not fit, the batch)."""
    oom: list[int] = []
    n = len(frames)
    while True:
        model, batch = build(frames[:n])
        try:
            out = run(model, batch)
            break
        except torch.cuda.OutOfMemoryError:
            if n == 1:
                raise
            oom.append(n)
            del model, batch
            torch.cuda.empty_cache()
            n //= 2
    if oom:
        out["oom_at"] = oom
    return out, batch


def _attrs(grid: Any) -> dict:
    return {"voxel_size": list(grid.voxel_size), "point_cloud_range": list(grid.point_cloud_range),
            "grid_shape_zyx": list(grid.shape_zyx)}


def clustered_features(n: int, dim: int = 64, clusters: int = 8, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 unit-norm features around ``clusters`` random directions (teacher-like)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((clusters, dim))[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def i2mask_vs_sklearn(n: int, mask: dict, device: torch.device, budget: Budget, log: Callable[[str], None]) -> dict:
    """I²Mask (k-means, partition, intra-class ratios, masks) of one n x 64 frame on ``device``
    and on the CPU, against scikit-learn's KMeans (the original's per-frame clustering) with
    its default n_init ("auto": one k-means++ run) and with the classic 10; speed-ups and the
    inertia of each clustering."""
    x = clustered_features(n)
    kw = dict(n_clusters=int(mask["n_clusters"]), n_partition=tuple(mask["n_partition"]),
              lambda_threshold=float(mask["lambda_threshold"]), base_mask_ratio=tuple(mask["base_ratio"]))
    xd = torch.from_numpy(x).to(device)
    res = {}
    _, med, reps = timed(lambda: res.update(r=i2mask(xd, generator=torch.Generator().manual_seed(0), **kw)), device,
                         budget, reps=5)
    out = {"n": n, "dim": 64, "device": device.type, "i2mask_ms": med * 1e3, "reps": reps,
           "inertia": _inertia(x, res["r"].cluster.cpu().numpy())}
    if device.type == "cuda":
        xc = torch.from_numpy(x)
        _, med_cpu, _ = timed(lambda: i2mask(xc, generator=torch.Generator().manual_seed(0), **kw),
                              torch.device("cpu"), budget, reps=2)
        out["i2mask_cpu_ms"] = med_cpu * 1e3
    try:
        import sklearn
        from sklearn.cluster import KMeans
    except ImportError:
        out["sklearn"] = None
        out["skipped"] = "scikit-learn is not installed: no comparison with the original's k-means"
        log(f"i2mask: {out['skipped']}")
        return out
    out["sklearn_version"] = sklearn.__version__
    for n_init in ("auto", 10):
        if budget.left() < 5:
            log(f"i2mask: sklearn n_init={n_init} skipped: the section's budget is spent")
            continue
        km = {}
        _, med_sk, _ = timed(lambda n_init=n_init: km.update(
            m=KMeans(n_clusters=kw["n_clusters"], n_init=n_init, random_state=0).fit(x)), torch.device("cpu"),
            budget, reps=2)
        key = "sklearn_ms" if n_init == "auto" else "sklearn_n_init10_ms"
        out[key] = med_sk * 1e3
        out[key.replace("_ms", "_speedup")] = med_sk / med
        out[key.replace("_ms", "_inertia")] = float(km["m"].inertia_)
        log(f"i2mask: {med * 1e3:.1f} ms on {device.type}, sklearn KMeans(n_init={n_init}) {med_sk * 1e3:.0f} ms: "
            f"{med_sk / med:.1f}x")
    return out


def _inertia(x: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared distances of the rows of ``x`` to their cluster's mean."""
    total = 0.0
    for k in np.unique(labels):
        rows = x[labels == k]
        total += float(((rows - rows.mean(0)) ** 2).sum())
    return total


def autocast_dtype(device: torch.device) -> str:
    """What the engine's AMP picks on ``device`` (amp on)."""
    d = amp_dtype(True, device)
    return str(d).replace("torch.", "") if d is not None else "fp32"
