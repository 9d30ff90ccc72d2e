"""`pretrain` / `finetune --out` claim their run folder as every output is claimed (issue 30): a folder
holding anything gpicture did not write there (plain or behind a symlink), or an output of another
kind, is refused with or without --force and left byte for byte as it was; a run folder of the same
kind (marked, or unmarked as DVC pulls it) is resumed, --force starts it afresh; symlinks resolve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gpicture.atomic import MARK, OutputError, mark_output, output_kind
from gpicture.training.run_folder import (
    PRETRAIN_RUN,
    check_run_folder,
    claim_run,
    finetune_run,
)
from stages.cli import app

runner = CliRunner()
COMMANDS = {
    "pretrain": ["pretrain", "--dataset", "nuscenes", "--procs", "1"],
    "finetune": ["finetune", "--task", "segmentation", "--dataset", "nuscenes", "--init", "scratch", "--procs", "1"],
}


def _invoke(command: str, out: Path, tmp_path: Path, *extra: str):
    """The command on a store that is not there: it gets past the claim to the store, or is refused at the claim."""
    return runner.invoke(app, [*COMMANDS[command], "--out", str(out), "--store", str(tmp_path / "missing.zarr"), *extra])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _foreign(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "student.pt").write_bytes(b"my own student, not gpicture's")
    (folder / "model.pt").write_bytes(b"\x00" * 64)
    (folder / "init_report.json").write_text('{"mine": true}')
    (folder / "notes.txt").write_text("results of last week")
    return folder


def _checkpoint(path: Path) -> None:
    """A training checkpoint as the engine writes it (the keys a resume reads)."""
    torch.save({"model": {}, "optimizer": {}, "scheduler": {}, "epoch": 0, "run_key": "k", "config": {}}, path)


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("via_symlink", [False, True])
@pytest.mark.parametrize("force", [False, True])
def test_a_folder_gpicture_did_not_write_is_refused_and_untouched(tmp_path, command, via_symlink, force) -> None:
    target = _foreign(tmp_path / "mine")
    before = _snapshot(target)
    out = target
    if via_symlink:
        out = tmp_path / "link"
        out.symlink_to(target, target_is_directory=True)
    res = _invoke(command, out, tmp_path, *(["--force"] if force else []))
    assert res.exit_code == 2, res.output
    assert "did not write there" in res.output and "missing.zarr" not in res.output, res.output
    assert str(target.resolve()) in res.output.replace("\n", "")  # the symlink resolved: its target is named
    assert _snapshot(target) == before and not (target / MARK).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["mine", *(["link"] if via_symlink else [])])


def test_an_output_of_another_kind_is_refused(tmp_path) -> None:
    pre = tmp_path / "pre"
    pre.mkdir()
    mark_output(pre, PRETRAIN_RUN.kind)
    res = _invoke("finetune", pre, tmp_path, "--force")  # a pre-training run is no segmentation fine-tune
    assert res.exit_code == 2 and "a pretrain-run written by gpicture, not a segmentation-finetune-run" in res.output
    store = tmp_path / "s.zarr"
    store.mkdir()
    (store / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                 "attributes": {"format": "gpicture-voxel-store"}}))
    res = _invoke("pretrain", store, tmp_path)
    assert res.exit_code == 2 and "a gpicture-voxel-store written by gpicture" in res.output, res.output
    assert (store / "zarr.json").is_file() and not (store / MARK).exists()


@pytest.mark.parametrize("marked", [True, False])
def test_a_run_folder_of_the_same_kind_resumes_and_force_starts_it_afresh(tmp_path, marked) -> None:
    run = tmp_path / "run"
    (run / "dvclive").mkdir(parents=True)
    _checkpoint(run / "checkpoint.pt")
    (run / ".gitignore").write_text("/checkpoint.pt\n")  # DVC's
    if marked:
        mark_output(run, PRETRAIN_RUN.kind)
    res = _invoke("pretrain", run, tmp_path)  # an interrupted run's folder (unmarked: as `dvc pull` brings it)
    assert res.exit_code == 2 and "missing.zarr" in res.output and "did not write" not in res.output, res.output
    assert (run / "checkpoint.pt").is_file() and output_kind(run) == PRETRAIN_RUN.kind  # kept; marked now
    link = tmp_path / "link"
    link.symlink_to(run, target_is_directory=True)
    res = _invoke("pretrain", link, tmp_path, "--force")
    assert res.exit_code == 2 and "missing.zarr" in res.output, res.output
    assert not (run / "checkpoint.pt").exists() and not (run / "dvclive").exists()  # afresh
    assert output_kind(run) == PRETRAIN_RUN.kind and link.is_symlink()


def test_an_unmarked_folder_with_a_checkpoint_that_is_not_ours_is_refused(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"weights": torch.zeros(2)}, run / "checkpoint.pt")  # a checkpoint of something else
    with pytest.raises(OutputError, match=r"did not write there \(checkpoint\.pt\)"):
        check_run_folder(run, PRETRAIN_RUN)
    (run / "checkpoint.pt").unlink()
    torch.save({"format": "gpicture-detection", "state": {}}, run / "model.pt")
    with pytest.raises(OutputError, match=r"did not write there \(model\.pt\)"):  # a detection model, not ours here
        check_run_folder(run, finetune_run("segmentation"))
    check_run_folder(run, finetune_run("detection"))


def test_claim_marks_first_removes_stale_temporaries_and_an_unused_new_folder(tmp_path) -> None:
    new = tmp_path / "new"
    with claim_run(new, PRETRAIN_RUN) as folder:
        assert folder == new.resolve() and output_kind(folder) == PRETRAIN_RUN.kind  # before anything else
        assert (tmp_path / ".new.lock").exists()
    assert not new.exists() and not (tmp_path / ".new.lock").exists()  # the run wrote nothing: no folder left
    with claim_run(new, PRETRAIN_RUN) as folder:
        _checkpoint(folder / "checkpoint.pt")
        (folder / ".checkpoint.pt.tmp-99999").write_bytes(b"half")  # a SIGKILLed save
    with claim_run(new, PRETRAIN_RUN):
        assert not (new / ".checkpoint.pt.tmp-99999").exists() and (new / "checkpoint.pt").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    with claim_run(empty, finetune_run("occupancy")):
        pass
    assert empty.is_dir()  # the user's folder stays
