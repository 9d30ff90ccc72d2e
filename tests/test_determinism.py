"""Same inputs, same bytes (issue 30): the teacher, the stand-in's training, pre-training and
fine-tuning run twice with the same seed and process count give identical outputs, and
``synth`` writes the same bytes whatever vector kernels NumPy and OpenBLAS pick.

Comparisons are exact (bytes of the written files; every tensor with ``torch.equal``; float32
teacher rows with ``array_equal``): every operation on these paths has a fixed reduction order
on the CPU, so no tolerance is needed. The kernel-dependent cases run in subprocesses with
``OPENBLAS_CORETYPE`` / ``NPY_DISABLE_CPU_FEATURES`` set for them alone (both are read when the
library loads); the suite's own environment is never changed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from gpicture.teacher.cache import TeacherConfig
from stages.cli import app

REPO = Path(__file__).resolve().parent.parent
TINY = {"d_model": 32, "vfe_filters": [32, 32], "dim_feedforward": 48, "set_size": 24}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


# OpenBLAS' Haswell kernels (AVX2 + FMA) are the ones whose sgemm rounds a column by its position
# (the teacher's former nondeterminism); they run on any AVX2 CPU, so an AVX-512 machine can
# exercise the AVX2-only machines' path. Without AVX2 the CPU's own kernels are used.
HASWELL = "Haswell" if {"avx2", "fma"} <= _cpu_flags() else None


def _files(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``folder`` by relative path (``skip``: path parts left out)."""
    out = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = f.relative_to(folder).as_posix()
        if not any(s in rel.split("/") for s in skip):
            out[rel] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _python(code: str, env: dict[str, str], timeout: int = 300) -> str:
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **env}, capture_output=True,
                       text=True, timeout=timeout, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_train_world) -> dict:
    root = tmp_path_factory.mktemp("determinism")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for d in ("nuscenes", "waymo"):
        params["model"]["profiles"]["small"][d].update(TINY)
    params["convert"]["nuscenes"]["root"] = str(tiny_train_world["raw"])
    assert params["pretrain"]["procs"] == 2 and params["finetune"]["procs"] == 2  # the defaults under test
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return {"root": root, "store": tiny_train_world["store"], "teacher": tiny_train_world["teacher"],
            "params": root / "params.yaml"}


_ENCODE_TWICE = """
import sys, numpy as np
from gpicture.data.store import VoxelStore
from gpicture.teacher import SealTeacher
from gpicture.teacher.cache import TeacherConfig, _teacher_points, frame_teacher_voxels
store = VoxelStore.open(sys.argv[1])
cfg = TeacherConfig(voxel_size=0.1, coordinates="cylindrical")
coords, feats = [], []
for b in range(len(store)):
    fr = store.frame(b, labels=False)
    tv = frame_teacher_voxels(fr, _teacher_points(fr, cfg), cfg)
    coords.append(np.column_stack([np.full(len(tv.coords), b, np.int32), tv.coords]))
    feats.append(tv.features)
coords, feats = np.concatenate(coords), np.concatenate(feats)
teacher = SealTeacher.from_checkpoint(None)
a, b = teacher.encode(coords, feats), teacher.encode(coords, feats)
print(int((a != b).sum()), a.size)
"""


@pytest.mark.parametrize("coretype", [None, HASWELL], ids=["native-openblas", "haswell-openblas"])
def test_the_teacher_gives_the_same_float32_features_twice(world, coretype) -> None:
    """Two encodes of the store's frames in one process, float32, exactly (before: 0.54 M of
    12.4 M values one ulp apart on real frames with the Haswell kernels)."""
    if coretype is None and HASWELL is None:
        pytest.skip("no AVX2 on this CPU: the native case is the only one")
    env = {"OPENBLAS_CORETYPE": coretype} if coretype else {}
    differing, total = map(int, _python(_ENCODE_TWICE.replace("sys.argv[1]", repr(str(world["store"]))),
                                        env).split()[-2:])
    assert total > 100_000 and differing == 0, f"{differing} of {total} teacher values differ between two runs"


def test_the_teacher_command_writes_the_same_store_twice(world, tmp_path) -> None:
    """`gpicture teacher` twice (separate processes, OpenBLAS' Haswell kernels where the CPU has
    them): every file of the two stores has the same bytes."""
    env = {"OPENBLAS_CORETYPE": HASWELL} if HASWELL else {}
    cli = Path(sys.executable).parent / "gpicture"
    for name in ("a.zarr", "b.zarr"):
        r = subprocess.run([str(cli), "teacher", "--store", str(world["store"]), "--out", str(tmp_path / name),
                            "--init", "random", "--params", str(world["params"])], cwd=tmp_path,
                           env={**os.environ, **env}, capture_output=True, text=True, timeout=600, check=False)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    a, b = _files(tmp_path / "a.zarr"), _files(tmp_path / "b.zarr")
    assert len(a) > 3 and a == b, sorted(k for k in a if a[k] != b.get(k))


def test_the_standin_teacher_trains_to_the_same_weights_twice() -> None:
    """Three steps of the stand-in's training, twice from the same seed: every weight equal
    (before: 306 of 374 tensors differed, the backward summing kernel-map rows in a
    run-dependent order)."""
    from gpicture.teacher.res16unet import Res16UNet34C
    from gpicture.training.teacher_fit import FitConfig, fit_standin
    from gpicture.training.teacher_pool import PoolConfig, simulate_pool

    frames = simulate_pool(PoolConfig(scenes=1, frames=2))
    tcfg = TeacherConfig(voxel_size=0.1, coordinates="cylindrical")
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        net = Res16UNet34C(1, 64, bn_momentum=0.05)
        runs.append(fit_standin(net, frames, 16, tcfg, FitConfig(steps=3, crop_deg=30.0, lr=2e-3)))
    a, b = (r.state_dict for r in runs)
    assert runs[0].losses == runs[1].losses
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def _tensors(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list | tuple) else ()
    out: dict[str, torch.Tensor] = {}
    for k, v in items:
        out.update(_tensors(v, f"{prefix}.{k}"))
    return out


def _without_provenance(obj: dict) -> bytes:
    """``obj`` less its ``provenance`` entry, serialised again by ``torch.save``."""
    buf = io.BytesIO()
    torch.save({k: v for k, v in obj.items() if k != "provenance"}, buf)
    return buf.getvalue()


def _same_run(a: Path, b: Path, files: tuple[str, ...]) -> None:
    """Each of ``files`` in run folders ``a`` and ``b``: every tensor equal, then the bytes.

    The files record the git commit they were made at (``provenance``); where it moved between the
    two runs (a commit landed meanwhile), everything but that record must serialise to the same bytes."""
    for name in files:
        oa, ob = (torch.load(d / name, map_location="cpu", weights_only=False) for d in (a, b))
        ta, tb = _tensors(oa), _tensors(ob)
        assert ta.keys() == tb.keys() and len(ta) > 50
        differ = {k: float((ta[k].double() - tb[k].double()).abs().max()) for k in ta if not torch.equal(ta[k], tb[k])}
        assert differ == {}, f"{name}: {len(differ)} tensors differ, e.g. {list(differ.items())[:3]}"
        assert _without_provenance(oa) == _without_provenance(ob), f"{name}: same tensors, different content"
        assert {k: v for k, v in oa["provenance"].items() if k != "git_commit"} == \
            {k: v for k, v in ob["provenance"].items() if k != "git_commit"}
        if oa["provenance"]["git_commit"] == ob["provenance"]["git_commit"]:
            assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name}: same content, different bytes"


def test_pretraining_twice_with_two_processes_gives_the_same_files(world, tmp_path) -> None:
    """`gpicture pretrain --procs 2`, 3 epochs (the DGPL gate opens the teacher loss in the third),
    twice: checkpoint.pt and student.pt identical, byte for byte."""
    for name in ("a", "b"):
        r = CliRunner().invoke(app, ["pretrain", "--dataset", "nuscenes", "--store", str(world["store"]), "--teacher",
                                     str(world["teacher"]), "--out", str(tmp_path / name), "--epochs", "3",
                                     "--procs", "2", "--params", str(world["params"])])
        assert r.exit_code == 0, r.output
    _same_run(tmp_path / "a", tmp_path / "b", ("student.pt", "checkpoint.pt"))
    metrics = [json.loads((tmp_path / n / "dvclive" / "metrics.json").read_text()) for n in ("a", "b")]
    assert metrics[0]["loss"] == metrics[1]["loss"]


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_finetuning_twice_with_two_processes_gives_the_same_files(world, tmp_path, task) -> None:
    """`gpicture finetune --procs 2` from scratch, 2 epochs, twice: model.pt and checkpoint.pt
    identical, byte for byte."""
    for name in ("a", "b"):
        r = CliRunner().invoke(app, ["finetune", "--task", task, "--dataset", "nuscenes", "--init", "scratch",
                                     "--store", str(world["store"]), "--out", str(tmp_path / name), "--epochs", "2",
                                     "--procs", "2", "--params", str(world["params"])])
        assert r.exit_code == 0, r.output
    _same_run(tmp_path / "a", tmp_path / "b", ("model.pt", "checkpoint.pt"))


_SYNTH = """
import hashlib, json, sys
from pathlib import Path
from numpy.core._multiarray_umath import __cpu_features__
from threadpoolctl import threadpool_info
from gpicture.synth.generate import SynthConfig, generate_nuscenes, generate_waymo
out = Path(sys.argv[1])
generate_nuscenes(SynthConfig(scenes=1, frames=1, seed=5, sweeps_before=1, occupancy=True, workers=1), out / "nuscenes")
generate_waymo(SynthConfig(scenes=1, frames=1, seed=5, workers=1), out / "waymo")
files = {f.relative_to(out).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
         for f in sorted(out.rglob("*")) if f.is_file()}
blas = [i.get("architecture") for i in threadpool_info()  # NumPy's own OpenBLAS (its matmul, linalg)
        if i.get("internal_api") == "openblas" and "numpy" in i.get("filepath", "")]
print(json.dumps({"files": files, "numpy": sorted(k for k, v in __cpu_features__.items() if v), "openblas": blas}))
"""



def test_synth_bytes_do_not_depend_on_the_cpus_vector_kernels(tmp_path) -> None:
    """The smallest nuScenes and Waymo datasets written with NumPy's and OpenBLAS' default kernels,
    with OpenBLAS' Haswell and Prescott (SSE3) kernels, and with NumPy's AVX / AVX-512 loops
    disabled: every file the same bytes (before: ego_pose.json under Haswell, and the Waymo
    segment too under Prescott, differed). Each setting is checked to have taken effect."""
    from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    # NumPy's dispatched AVX / FMA / AVX-512 loops this CPU has, all disabled for one run (SVML's
    # AVX512_SKX transcendental functions among them); what NumPy does not dispatch it cannot disable
    numpy_off = " ".join(f for f in __cpu_dispatch__ if f.startswith(("AVX", "FMA", "F16C")) and __cpu_features__[f])
    settings = {"default": {}, "openblas-prescott": {"OPENBLAS_CORETYPE": "Prescott"},
                "numpy-baseline": {"NPY_DISABLE_CPU_FEATURES": numpy_off}}
    if HASWELL:
        settings["openblas-haswell"] = {"OPENBLAS_CORETYPE": HASWELL}
    code = _SYNTH
    runs = {name: json.loads(_python(code.replace("sys.argv[1]", repr(str(tmp_path / name))), env).splitlines()[-1])
            for name, env in settings.items()}
    base = runs["default"]
    assert base["openblas"] and base["openblas"] != ["Prescott"]
    assert runs["openblas-prescott"]["openblas"] == ["Prescott"]
    if HASWELL:
        assert runs["openblas-haswell"]["openblas"] == ["Haswell"]
    if numpy_off:
        assert not set(numpy_off.split()) & set(runs["numpy-baseline"]["numpy"])
    assert len(base["files"]) > 10 and any(k.endswith(".tfrecord") for k in base["files"])
    for name, run in runs.items():
        differ = sorted(k for k in base["files"] if run["files"].get(k) != base["files"][k])
        assert run["files"].keys() == base["files"].keys() and differ == [], f"{name}: {differ}"
