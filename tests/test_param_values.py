"""Values are checked where they are read (issue 30): epochs >= 1, fractions in (0, 1], sizes > 0,
integers where integers are meant; the message names the params file and dotted key (a model
profile's override by its own key), or the command-line option, whichever the value came from.
Each row: exit 2, that one message, no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gpicture.params import (
    ParamsError,
    Section,
    check_fraction,
    check_int,
    check_voxel_size,
)
from stages.cli import app

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()

PRETRAIN = ["pretrain", "--dataset", "nuscenes", "--procs", "1"]
FINETUNE = ["finetune", "--task", "segmentation", "--dataset", "nuscenes", "--init", "scratch"]

# (command, params edits {dotted key: value}, extra options, the message)
CASES: list[tuple[list[str], dict[str, Any], list[str], str]] = [
    (PRETRAIN, {"pretrain.epochs": 0}, [], "params.yaml: pretrain.epochs: 0 is not >= 1"),
    (PRETRAIN, {"pretrain.epochs": -1}, [], "params.yaml: pretrain.epochs: -1 is not >= 1"),
    (PRETRAIN, {"pretrain.epochs": "four"}, [], "params.yaml: pretrain.epochs: 'four' is not an integer"),
    (PRETRAIN, {"pretrain.epochs": 2.5}, [], "params.yaml: pretrain.epochs: 2.5 is not an integer"),
    (PRETRAIN, {}, ["--epochs", "0"], "--epochs: 0 is not >= 1"),
    (PRETRAIN, {}, ["--epochs", "-1"], "--epochs: -1 is not >= 1"),
    (PRETRAIN, {"model.profile": "full", "pretrain.profiles.full.nuscenes.epochs": 0}, [],
     "params.yaml: pretrain.profiles.full.nuscenes.epochs: 0 is not >= 1"),
    (PRETRAIN, {"pretrain.frame_fraction": 0}, [], "params.yaml: pretrain.frame_fraction: 0 is not in (0, 1]"),
    (PRETRAIN, {"pretrain.lr": 0}, [], "params.yaml: pretrain.lr: 0 is not > 0"),
    (PRETRAIN, {"pretrain.batch_size": 0}, [], "params.yaml: pretrain.batch_size: 0 is not >= 1"),
    (PRETRAIN, {"pretrain.mask.n_clusters": "eight"}, [], "params.yaml: pretrain.mask.n_clusters: 'eight' is not an integer"),
    (PRETRAIN, {"pretrain.heads.true_points": 0}, [], "params.yaml: pretrain.heads.true_points: 0 is not >= 1"),
    (PRETRAIN, {"pretrain.teacher_targets": "yes please"}, [],
     "params.yaml: pretrain.teacher_targets: 'yes please' is not true or false"),
    (FINETUNE, {"finetune.label_fraction": 1.5}, [], "params.yaml: finetune.label_fraction: 1.5 is not in (0, 1]"),
    (FINETUNE, {}, ["--label-fraction", "1.5"], "--label-fraction: 1.5 is not in (0, 1]"),
    (FINETUNE, {"finetune.segmentation.epochs": 0}, [], "params.yaml: finetune.segmentation.epochs: 0 is not >= 1"),
    (FINETUNE, {}, ["--epochs", "0"], "--epochs: 0 is not >= 1"),
    (FINETUNE, {"finetune.segmentation.batch_size": 1.5}, [],
     "params.yaml: finetune.segmentation.batch_size: 1.5 is not an integer"),
    (FINETUNE, {"finetune.procs": 0}, [], "params.yaml: finetune.procs: 0 is not >= 1"),
    (FINETUNE, {"finetune.seed": "zero"}, [], "params.yaml: finetune.seed: 'zero' is not an integer"),
    (["synth", "nuscenes"], {"synth.nuscenes.scenes": "four"}, [],
     "params.yaml: synth.nuscenes.scenes: 'four' is not an integer"),
    (["synth", "nuscenes"], {"synth.nuscenes.density": 0}, [], "params.yaml: synth.nuscenes.density: 0 is not > 0"),
    (["evaluate", "--task", "segmentation", "--dataset", "nuscenes"], {"evaluate.segmentation.batch_size": 0}, [],
     "params.yaml: evaluate.segmentation.batch_size: 0 is not >= 1"),
    (["study-run", "--task", "segmentation", "--init", "scratch"], {"study.jobs": 0}, [],
     "params.yaml: study.jobs: 0 is not >= 1"),
    (["convert", "nuscenes", "--split", "train"], {"convert.nuscenes.voxel_size": [0, 0.4, 0.4]}, [],
     "params.yaml: convert.nuscenes.voxel_size[0]: 0 is not > 0"),
    (["convert", "nuscenes", "--split", "train"],
     {"model.profile": "full", "convert.profiles.full.nuscenes.voxel_size": [0.2, -0.2, 0.2]}, [],
     "params.yaml: convert.profiles.full.nuscenes.voxel_size[1]: -0.2 is not > 0"),
    (["finetune", "--task", "occupancy", "--dataset", "nuscenes", "--init", "scratch"],
     {"finetune.occupancy.grid.nuscenes.voxel_size": 0}, [],
     "params.yaml: finetune.occupancy.grid.nuscenes.voxel_size: 0 is not > 0"),
    (["finetune", "--task", "occupancy", "--dataset", "nuscenes", "--init", "scratch"],
     {"finetune.occupancy.trunk_channels": 2.5}, [],
     "params.yaml: finetune.occupancy.trunk_channels: 2.5 is not an integer"),
    (["finetune", "--task", "detection", "--dataset", "nuscenes", "--init", "scratch"],
     {"finetune.detection.head_stride": 0}, [], "params.yaml: finetune.detection.head_stride: 0 is not >= 1"),
    (FINETUNE, {"finetune.segmentation.decoder_channels": "wide"}, [],
     "params.yaml: finetune.segmentation.decoder_channels: 'wide' is not an integer"),
    (["teacher-fit", "--dataset", "nuscenes"], {"teacher.standin.steps": 2.5}, [],
     "params.yaml: teacher.standin.steps: 2.5 is not an integer"),
    (["teacher-fit", "--dataset", "nuscenes"], {"teacher.standin.pool.scenes": 0}, [],
     "params.yaml: teacher.standin.pool.scenes: 0 is not >= 1"),
]


def _edit(params: dict, dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    node = params
    for key in path:
        node = node.setdefault(key, {})
    node[last] = value


@pytest.mark.parametrize("command,edits,extra,message", CASES,
                         ids=[f"{c[0]}-{'-'.join(e) or ' '.join(x)}" for c, e, x, _ in CASES])
def test_a_bad_value_is_one_message_naming_where_it_came_from(tmp_path, monkeypatch, command, edits, extra,
                                                              message) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in edits.items():
        _edit(params, dotted, value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)  # relative defaults (models/, metrics/, data/) land here, if anywhere
    args = [*command, *extra, "--params", "params.yaml"]
    if command[0] in ("pretrain", "finetune", "evaluate"):
        args += ["--store", "missing.zarr"]
    if command[0] in ("pretrain", "finetune", "synth", "teacher-fit", "convert"):
        args += ["--out", "out"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert message in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "missing.zarr" not in res.output  # refused where the value is read, before the run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_the_checks_themselves() -> None:
    where = "params.yaml: convert.nuscenes.voxel_size"
    assert check_voxel_size([0.4, 0.4, 0.4], where) == (0.4, 0.4, 0.4)
    for bad, msg in (([0, 0.4, 0.4], r"voxel_size\[0\]: 0 is not > 0"), ([0.4, -1, 0.4], r"\[1\]: -1 is not > 0"),
                     ([0.4, 0.4], "has 2 entries, not 3"), (0.4, "0.4 is not a list"),
                     ([0.4, "a", 0.4], r"\[1\]: 'a' is not a number"), ([0.4, float("nan"), 0.4], "not a finite")):
        with pytest.raises(ParamsError, match=msg):
            check_voxel_size(bad, where)
    assert check_fraction(1, "k") == 1.0 and check_fraction("0.5", "k") == 0.5  # PyYAML reads 5e-1 as a string
    for bad in (0, 1.01, True, None):
        with pytest.raises(ParamsError, match="^k: "):
            check_fraction(bad, "k")
    for bad in (2.0, True, "4", None):
        with pytest.raises(ParamsError, match="is not an integer"):
            check_int(bad, "k")
    sec = Section(Path("p.yaml"), "pretrain", {"epochs": 3, "seed": None}, {"epochs": "pretrain.profiles.full.x.epochs"})
    assert sec.integer("epochs", 1) == 3 and sec.integer("seed", 0, default=0) == 0
    assert sec.integer("epochs", 1, override=5, option="--epochs") == 5
    with pytest.raises(ParamsError, match=r"^p\.yaml: missing key 'pretrain\.lr'$"):
        sec.positive("lr")
    with pytest.raises(ParamsError, match=r"^--epochs: 0 is not >= 1$"):
        sec.integer("epochs", 1, override=0, option="--epochs")
