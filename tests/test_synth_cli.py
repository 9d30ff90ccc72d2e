"""`gpicture synth` on the command line: arguments, determinism, atomic output."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gpicture.synth.generate import SynthConfig, SynthError, generate_nuscenes, nuscenes_scene_names
from gpicture.synth.world import make_scene
from stages.cli import app

runner = CliRunner()


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_scene(tmp_path) -> None:
    cfg = SynthConfig(scenes=1, frames=1, seed=5, sweeps_before=1, occupancy=False)
    generate_nuscenes(cfg, tmp_path / "a")
    generate_nuscenes(cfg, tmp_path / "b")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    s1, s2 = make_scene(1, 5.0), make_scene(2, 5.0)
    assert not np.array_equal(s1.world.boxes.center[:5], s2.world.boxes.center[:5])


def test_scene_names_follow_the_official_splits() -> None:
    from nuscenes.utils.splits import create_splits_scenes

    sp = create_splits_scenes()
    assert nuscenes_scene_names(4, "v1.0-mini", 0.25) == sp["mini_train"][:2] + sp["mini_val"]
    names = nuscenes_scene_names(8, "v1.0-trainval", 0.25)
    assert names[:6] == sp["train"][:6] and names[6:] == sp["val"][:2]
    with pytest.raises(SynthError, match="v1.0-mini has 10 scenes"):
        nuscenes_scene_names(11, "v1.0-mini", 0.25)


@pytest.mark.parametrize("args,message", [
    (["--scenes", "-1"], "--scenes must be a positive integer"),
    (["--frames", "0"], "--frames must be a positive integer"),
])
def test_bad_counts_give_one_clear_error_and_write_nothing(tmp_path, args, message) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["synth", "nuscenes", "--out", str(out), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["synth", "waymo", "--out", str(out), "--scenes", "1", "--frames", "1"])
    assert result.exit_code == 2
    assert "output exists (use --force" in result.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # --force replaces only a synthetic Waymo dataset: the user's own folder is refused, untouched
    result = runner.invoke(app, ["synth", "waymo", "--out", str(out), "--scenes", "1", "--frames", "1", "--force"])
    assert result.exit_code == 2 and "not a synthetic-waymo written by gpicture" in result.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    assert runner.invoke(app, ["synth", "waymo", "--out", str(out), "--scenes", "1", "--frames", "1"]).exit_code == 0
    result = runner.invoke(app, ["synth", "waymo", "--out", str(out), "--scenes", "1", "--frames", "1", "--force"])
    assert result.exit_code == 0, result.output
    assert list((out / "training").glob("*.tfrecord"))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind


def test_unwritable_output_is_refused(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(app, ["synth", "nuscenes", "--out", str(blocker / "sub"), "--scenes", "1", "--frames", "1"])
    assert result.exit_code == 2
    assert "cannot write there" in result.output


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch) -> None:
    import gpicture.synth.nuscenes_writer as writer

    def boom(*args, **kwargs):  # noqa: ANN002, ANN003
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "write_nuscenes", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_nuscenes(SynthConfig(scenes=1, frames=1, sweeps_before=0, occupancy=False), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
