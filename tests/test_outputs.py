"""Outputs: one writer each (locks), `--force` replaces only what this project wrote, stale
temporaries of killed runs are removed, and a lost claim never moves an output into place."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gpicture.atomic import MARK, OutputError, OutputLock, claim_output, into_place, lock_path, output_kind, temp_sibling
from gpicture.data.store import FORMAT, VoxelStore
from gpicture.synth.generate import SynthConfig, generate_nuscenes, generate_waymo
from stages.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    generate_waymo(SynthConfig(scenes=2, frames=2, seed=3, workers=1), root / "waymo")
    return root / "waymo"


def _convert(raw: Path, out: Path, *extra: str):
    return runner.invoke(app, ["convert", "waymo", "--split", "training", "--root", str(raw), "--out", str(out),
                               "--workers", "1", *extra])


def _same_store(a: Path, b: Path) -> None:
    sa, sb = VoxelStore.open(a), VoxelStore.open(b)
    assert len(sa) == len(sb)
    for i in range(len(sa)):
        fa, fb = sa[i], sb[i]
        assert fa.frame_id == fb.frame_id
        np.testing.assert_array_equal(fa.points, fb.points)
        np.testing.assert_array_equal(fa.voxel_coords, fb.voxel_coords)
        for k in fa.features:
            np.testing.assert_array_equal(fa.features[k], fb.features[k])


def test_a_store_is_marked_and_force_replaces_only_a_store(raw, tmp_path) -> None:
    out = tmp_path / "train.zarr"
    assert _convert(raw, out).exit_code == 0
    assert output_kind(out) == FORMAT  # a Zarr store says its kind in its format attribute
    assert not (out / MARK).exists()  # (a marker file would be a stray member of the Zarr group)
    again = _convert(raw, out)
    assert again.exit_code == 2 and "use --force" in again.output
    assert _convert(raw, out, "--force").exit_code == 0  # a voxel store of ours: replaced

    # --out naming a folder of other things (the case: the dataset's folder of stores)
    parent = tmp_path / "zarr"
    (parent / "notes").mkdir(parents=True)
    (parent / "notes" / "todo.txt").write_text("keep me")
    res = _convert(raw, parent, "--force")
    assert res.exit_code == 2
    assert str(parent) in res.output and "not a gpicture-voxel-store" in res.output
    assert (parent / "notes" / "todo.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["train.zarr", "zarr"])  # nothing else written


def test_force_refuses_an_output_of_another_kind(raw, tmp_path) -> None:
    synth_out = tmp_path / "raw"
    generate_nuscenes(SynthConfig(scenes=1, frames=1, sweeps_before=0, seed=1, workers=1, occupancy=False), synth_out)
    assert output_kind(synth_out) == "synthetic-nuscenes"
    res = _convert(raw, synth_out, "--force")  # a raw dataset is not a store: never deleted by convert
    assert res.exit_code == 2 and "not a gpicture-voxel-store" in res.output and "synthetic-nuscenes" in res.output
    assert (synth_out / "v1.0-mini" / "sample.json").is_file()
    # and synth --force replaces its own kind only
    store = tmp_path / "s.zarr"
    assert _convert(raw, store).exit_code == 0
    res = runner.invoke(app, ["synth", "nuscenes", "--out", str(store), "--scenes", "1", "--frames", "1", "--force"])
    assert res.exit_code == 2 and "not a synthetic-nuscenes" in res.output
    VoxelStore.open(store)
    res = runner.invoke(app, ["synth", "nuscenes", "--out", str(synth_out), "--scenes", "1", "--frames", "1", "--force"])
    assert res.exit_code == 0, res.output


def test_a_second_writer_fails_at_once_and_the_first_is_untouched(raw, tmp_path) -> None:
    out = tmp_path / "train.zarr"
    assert _convert(raw, out).exit_code == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with OutputLock(out):  # another writer holds the store (a lock is per open file: as another process)
        res = _convert(raw, out, "--force")
        assert res.exit_code == 2
        assert f"{out}: another process (pid {os.getpid()}) is writing it" in res.output
        # the teacher's resumable work folder is protected the same way
        res = runner.invoke(app, ["teacher", "--store", str(out), "--out", str(out), "--init", "random"])
        assert res.exit_code == 2 and "is writing it" in res.output
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert not lock_path(out).exists()  # released locks leave no file behind


def test_two_concurrent_converts_one_wins(raw, tmp_path, venv_bin) -> None:
    out = tmp_path / "train.zarr"
    cmd = [str(venv_bin / "gpicture"), "convert", "waymo", "--split", "training", "--root", str(raw),
           "--out", str(out), "--workers", "1"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stdout.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(text for rc, text in results if rc == 2)
    assert "is writing it" in loser or "output exists" in loser
    VoxelStore.open(out)
    assert [p.name for p in tmp_path.iterdir()] == ["train.zarr"]


def test_stale_temporaries_are_removed_with_a_log_line(raw, tmp_path) -> None:
    out = tmp_path / "train.zarr"
    stale = tmp_path / ".train.zarr.tmp-k1ll3d"
    (stale / "points").mkdir(parents=True)
    old = tmp_path / ".train.zarr.old-4242"
    old.mkdir()
    mine = tmp_path / ".other.zarr.tmp-x"  # another output's: not this claim's to remove
    mine.mkdir()
    with claim_output(out, FORMAT, log=(logged := []).append):
        assert not stale.exists() and not old.exists() and mine.exists()
    assert any(str(stale) in line and "interrupted run" in line for line in logged)
    res = runner.invoke(app, ["convert", "waymo", "--split", "training", "--root", str(raw), "--out",
                              str(tmp_path / "other.zarr"), "--workers", "1"])
    assert res.exit_code == 0 and not mine.exists() and "interrupted run" in res.output


def test_a_lost_claim_never_moves_an_output_into_place(tmp_path) -> None:
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="lost its lock"):
        with claim_output(out, "thing") as lock, into_place(temp_sibling(out), out, "thing", lock) as tmp:
            (tmp / "a").write_text("x")
            lock_path(out).unlink()  # someone removed the lock file: a new writer could claim it now
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_claims_exclude_other_processes(tmp_path) -> None:
    out = tmp_path / "out"
    code = ("import sys, time; from gpicture.atomic import OutputLock; l = OutputLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=f"pid {holder.pid}"):
            OutputLock(out).acquire()
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(out) as lock:  # the kernel released the dead holder's lock; its stale file is reused
        assert lock.owns()


@pytest.mark.parametrize("command", [
    ["finetune", "--task", "segmentation", "--dataset", "nuscenes", "--init", "scratch", "--procs", "1"],
    ["pretrain", "--dataset", "nuscenes", "--procs", "1"],
    ["evaluate", "--task", "segmentation", "--dataset", "nuscenes"],
])
def test_training_and_evaluation_outputs_have_one_writer(tmp_path, command) -> None:
    out = tmp_path / ("metrics.json" if command[0] == "evaluate" else "run")
    args = [*command, "--out", str(out), "--store", str(tmp_path / "missing.zarr")]
    if command[0] == "evaluate":
        args += ["--report-dir", str(tmp_path / "predictions")]
    with OutputLock(out):  # a run of the same folder / metrics file is under way
        res = runner.invoke(app, args)
    assert res.exit_code == 2 and f"{out}: another process" in res.output, res.output
    assert not out.exists()
    res = runner.invoke(app, args)  # free again: the run gets as far as its (missing) store
    assert res.exit_code == 2 and "missing.zarr" in res.output and "another process" not in res.output, res.output
