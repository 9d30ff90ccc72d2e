"""benchmarks/gpu_check.py in its CPU mode (CI has no GPU), and the engine's sync-free step.

The script runs once, as a subprocess, exactly as CI would (``--cpu``): it must exit 0, write
its JSON with every section present, and every figure in it must be finite and positive.
The unit tests below check what the GPU run relies on and the CPU can show: a non-finite
step caught on the device is reported at the next sync, naming that step, with the weights
and AdamW's state as they were before it; the metrics read at the syncs are the steps'
means; batches pin and move as ``fit`` moves them; ``compile_model`` keeps the checkpoint keys.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from gpicture.data.batch import VoxelBatch
from gpicture.training.engine import Pinned, PinningCollate, StepContext, TrainConfig, map_tensors, to_device
from gpicture.training.step import NonFiniteError, TrainStep, amp_dtype, compile_model

ROOT = Path(__file__).resolve().parents[1]
SECTIONS_OK = ("kernels", "student_nuscenes", "student_waymo", "pretrain_step", "detection_step", "i2mask")
TIMES = ("ms_per_frame", "frames_per_s", "s_per_step", "i2mask_ms", "sklearn_ms", "tflops", "gflop", "wall_s")


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):  # noqa: ANN201
    out = tmp_path_factory.mktemp("gpu") / "sub" / "gpu.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH="")  # the script finds gpicture by itself
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu", "--out", str(out),
                           "--deadline", "150"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
                          check=False)
    return proc, out


def _numbers(obj, path: str = ""):  # noqa: ANN001, ANN202
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return
    if isinstance(obj, int | float):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for j, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{j}]")


def test_cpu_mode_exits_0_and_writes_every_section(cpu_run) -> None:
    proc, out = cpu_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["mode"].startswith("cpu-fallback") and res["machine"]["gpu"] is None
    assert res["machine"]["torch"] == torch.__version__ and res["machine"]["python"]
    for name in SECTIONS_OK:
        assert res["sections"][name]["status"] == "ok", (name, res["sections"][name])
        assert name in res
    for name in ("build", "student_nuscenes_compiled", "student_waymo_compiled"):  # skipped, saying why
        assert res["sections"][name]["status"] == "skipped" and res["sections"][name]["reason"]
    assert any("torch.compile is measured on CUDA only" in line for line in res["skipped"])
    assert res["wall_s"] < 120, res["wall_s"]  # tiny inputs: the whole CPU fallback in about a minute
    assert "goal: DSVT forward" in proc.stdout and "frames/s" in proc.stdout  # the table


def test_every_figure_is_finite_and_the_timings_positive(cpu_run) -> None:
    _, out = cpu_run
    res = json.loads(out.read_text())
    numbers = list(_numbers(res))
    assert len(numbers) > 50
    bad = [(p, v) for p, v in numbers if not math.isfinite(v) or v < 0]
    assert not bad, bad
    timings = [(p, v) for p, v in numbers if p.rsplit(".", 1)[-1] in TIMES]
    assert len(timings) >= 20 and all(v > 0 for _, v in timings), timings
    for ds in ("nuscenes", "waymo"):
        runs = res[f"student_{ds}"]["runs"]
        assert {(r["mode"], r["precision"]) for r in runs} == {
            (m, p) for m in ("forward", "forward_backward") for p in ("fp32", "bf16")}
        assert res[f"student_{ds}"]["points"] > 1000 and res[f"student_{ds}"]["voxels"] > 100


def test_kernels_syncs_and_goals_in_cpu_mode(cpu_run) -> None:
    _, out = cpu_run
    res = json.loads(out.read_text())
    k = res["kernels"]
    assert k["failures"] == 0 and {c["op"] for c in k["checks"]} == {"rotated_iou", "nms_rotated", "in_group_index"}
    assert all(c["impl"] == "cpu-native" for c in k["checks"])  # no CUDA build here
    for name in ("pretrain_step", "detection_step"):
        step = res[name]
        assert step["frames"] == 4 and step["amp"] == "fp32" and step["steps"] >= 1
        assert step["engine_host_reads"] == 1  # one read for all the timed steps: none inside a step
        assert step["syncs"]["counted"] is False and "CUDA" in step["syncs"]["reason"]
    assert res["pretrain_step"]["decoder_blocks"] and res["detection_step"]["boxes"] > 0
    i2 = res["i2mask"]
    assert i2["sklearn_speedup"] > 0 and i2["inertia"] > 0 and i2["sklearn_inertia"] > 0
    assert [g["met"] for g in res["goals"]] == [None, None, None]  # the CPU fallback is no measure of the goals
    table = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--table", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
    assert table.startswith("| figure | value |") and "| pretrain step (batch 4, fp32) |" in table


# ----------------------------------------------------------------------------------------------
# The engine's step
# ----------------------------------------------------------------------------------------------


def _batch(k: int) -> VoxelBatch:
    return VoxelBatch(points=torch.zeros(1, 3), features=torch.full((1, 1), float(k + 1)),
                      point_voxel=torch.zeros(1, dtype=torch.long), voxel_coords=torch.zeros(1, 4, dtype=torch.int32),
                      point_ptr=torch.tensor([0, 1]), frame_index=torch.tensor([k]))


def _trainer(model: nn.Module, window: int = 8) -> TrainStep:
    return TrainStep(model, 0.01, 0.05, (0.95, 0.85), 0.4, 10.0, 35.0, 20, torch.device("cpu"), amp=True,
                     window=window, frame_ids=[f"frame-{k}" for k in range(10)])


def _step(bad: set[int], how: str = "loss"):  # noqa: ANN202
    def step(m: nn.Module, batch: VoxelBatch, ctx: StepContext) -> tuple:
        y = m(batch.features).pow(2).mean()
        if ctx.step in bad:
            y = y * float("nan") if how == "loss" else y + float("inf")
        return y, {"half": y.detach() / 2, "const": 3.0}
    return step


@pytest.mark.parametrize("how", ["loss", "inf"])
def test_a_bad_step_is_caught_on_the_device_and_reported_at_the_sync(how) -> None:
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    tr = _trainer(model)
    ctx = lambda k: StepContext(epoch=0, step=k, epoch_state={}, device=torch.device("cpu"))  # noqa: E731
    tr.step(_step(set()), _batch(0), ctx(0), "run: step 1", [0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = {k: v.clone() for k, v in tr.opt.state[model.weight].items()}
    for k in (1, 2, 3):  # the first bad step, then good ones in the same window
        tr.step(_step({1, 3}, how), _batch(k), ctx(k), f"run: step {k + 1}", [k])
    assert tr.host_syncs == 0 and tr.pending == 4
    with pytest.raises(NonFiniteError) as exc:
        tr.sync()
    msg = str(exc.value)
    assert msg.startswith("run: step 2: non-finite loss") and "['frame-1']" in msg and "frame-3" not in msg
    assert ("loss nan" if how == "loss" else "loss inf") in msg
    for k, v in model.state_dict().items():  # neither the bad step nor those after it moved the weights
        assert torch.equal(v, before[k])
    for k, v in tr.opt.state[model.weight].items():  # nor AdamW's moments and step count
        assert torch.equal(v, opt_before[k]), k


def test_sync_reads_the_means_once_per_window() -> None:
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    tr = _trainer(model, window=3)
    losses = []

    def step(m: nn.Module, batch: VoxelBatch, ctx: StepContext) -> tuple:
        y = m(batch.features).pow(2).mean()
        losses.append(float(y.detach()))
        return y, {"half": y.detach() / 2, "const": 3.0}

    for k in range(6):
        tr.step(step, _batch(k), StepContext(0, k, {}, torch.device("cpu")), f"step {k}", [k])
        if tr.pending == 3:
            report = tr.sync()
            assert report.steps == 3 and report.last_loss == pytest.approx(losses[-1])
    means = tr.means()
    assert tr.host_syncs == 2 and list(means)[:2] == ["loss", "grad_norm"]
    assert means["loss"] == pytest.approx(sum(losses) / 6) and means["half"] == pytest.approx(sum(losses) / 12)
    assert means["const"] == 3.0 and means["grad_norm"] > 0
    with pytest.raises(ValueError, match="log_every must be an integer >= 1"):
        TrainConfig(epochs=1, batch_size=1, lr=0.1, weight_decay=0.0, log_every=0)


def test_batches_pin_and_move_as_fit_moves_them() -> None:
    b = _batch(3)
    collate = PinningCollate(lambda items: items[0])
    assert isinstance(pickle.loads(pickle.dumps(PinningCollate(VoxelBatch.stack))), PinningCollate)  # for workers
    wrapped = collate([b])
    assert isinstance(wrapped, Pinned) and wrapped.batch is b
    assert to_device(b, torch.device("cpu")) is b  # the CPU path copies nothing
    doubled = map_tensors({"x": [b, (torch.ones(2),)]}, lambda t: t * 2)
    assert torch.equal(doubled["x"][0].features, b.features * 2) and torch.equal(doubled["x"][1][0], torch.full((2,), 2.0))
    assert amp_dtype(True, torch.device("cpu")) is None and amp_dtype(False, torch.device("cuda")) is None


def test_compile_model_compiles_the_set_attention_layers_in_place() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _synthetic import TINY_GRID, TINY_MODEL, grid_attrs

    from gpicture.models.student import Student, StudentConfig

    student = Student(StudentConfig.from_params(TINY_MODEL, grid_attrs(TINY_GRID)))
    keys = list(student.state_dict())
    assert compile_model(student) == 8  # 4 stages x 1 block x 2 layers; compiled lazily, at their first call
    assert list(student.state_dict()) == keys  # checkpoints keep their keys (no _orig_mod. prefix)


def test_the_compiled_student_computes_what_the_eager_one_does() -> None:
    """The engine's compile option on the CPU (on a GPU, gpu_check times it): same features on a
    first frame and on a second of another size (dynamic shapes: no recompilation needed)."""
    import copy

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _synthetic import TINY_GRID, TINY_MODEL, grid_attrs, lidar_frame, voxel_batch

    from gpicture.models.student import Student, StudentConfig

    torch.manual_seed(0)
    eager = Student(StudentConfig.from_params(TINY_MODEL, grid_attrs(TINY_GRID))).eval()
    compiled = copy.deepcopy(eager)
    compile_model(compiled)
    for seed, n in ((0, 2000), (1, 1500)):
        batch = voxel_batch([lidar_frame(TINY_GRID, seed=seed, index=seed, max_points=n)], TINY_MODEL["point_features"])
        with torch.no_grad():
            want, got = eager.encode(batch), compiled.encode(batch)
        assert torch.allclose(got.features, want.features, atol=1e-4)
        assert all(torch.allclose(g, w, atol=1e-4) for g, w in zip(got.activations, want.activations, strict=True))
