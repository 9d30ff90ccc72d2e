"""The label-efficiency study (issue 19): the report from metrics files (mean ± spread, gains, the
exceeds-the-spread marker, missing runs), the dvc.yaml study stages expanded from params study
(tasks x inits x fractions x seeds, each with its own init's dependency), and the fine-tuning
seed (`gpicture finetune --seed`): the labelled subset and the initialisation it draws."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import stages.finetune as finetune_stage
from gpicture.data.convert import ConvertConfig, convert
from gpicture.data.spec import NUSCENES
from gpicture.data.store import VoxelStore
from gpicture.data.voxelize import VoxelGrid
from gpicture.study import (
    StudySpec,
    collect_runs,
    format_cell,
    markdown_report,
    run_metrics_path,
    run_path,
    study_cells,
    study_gains,
    write_report,
)
from gpicture.synth.generate import SynthConfig, generate_nuscenes
from gpicture.tasks.detection.task import DetectionConfig, DetectionHead, DetectionTask
from gpicture.training.engine import DistInfo, TrainConfig
from gpicture.training.finetune import FinetuneRun, finetune, label_subset
from stages.cli import app
from stages.study_run import plan

REPO = Path(__file__).resolve().parent.parent
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
TINY = {**PARAMS["model"]["profiles"]["small"]["nuscenes"], "d_model": 32, "vfe_filters": [32, 32],
        "dim_feedforward": 48, "set_size": 24}
SPEC = {"dataset": "nuscenes", "tasks": ["detection", "segmentation"],
        "metrics": {"detection": "mAP", "segmentation": "mIoU"}, "fractions": [0.1, 0.25], "seeds": [0, 1],
        "inits": {"gpicture": "a/student.pt", "noteacher": "b/student.pt", "scratch": "scratch"},
        "claim_fraction": 0.25}
# (task, init, fraction) -> the seeds' values (None: no metrics file; "null": the metric is null)
VALUES = {
    ("detection", "gpicture", 0.25): (0.30, 0.34),     # 32.0 ± 2.0
    ("detection", "scratch", 0.25): (0.20, 0.22),      # 21.0 ± 1.0: gain +11.0 > 2.0 ✓
    ("detection", "noteacher", 0.25): (0.30, 0.32),    # 31.0 ± 1.0: gain +1.0 < 2.0
    ("detection", "gpicture", 0.1): (0.10, 0.20),      # 15.0 ± 5.0
    ("detection", "scratch", 0.1): (0.12, 0.14),       # 13.0 ± 1.0: gain +2.0 < 5.0
    ("detection", "noteacher", 0.1): (0.05, None),     # one seed: no verdict
    ("segmentation", "gpicture", 0.25): (0.50, 0.52),
    ("segmentation", "scratch", 0.25): (0.30, 0.31),
    ("segmentation", "noteacher", 0.25): (0.40, 0.41),  # gain +10.5 > 1.0 ✓
    ("segmentation", "gpicture", 0.1): (0.40, 0.40),
    ("segmentation", "scratch", 0.1): (None, None),    # both runs missing
    ("segmentation", "noteacher", 0.1): ("null", 0.10),
}


def _write_metrics(root: Path, values: dict = VALUES) -> None:
    for (task, init, fraction), seeds in values.items():
        key = SPEC["metrics"][task]
        for seed, v in enumerate(seeds):
            if v is None:
                continue
            f = run_metrics_path(root, task, init, fraction, seed)
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps({key: None if v == "null" else v, "other": 1.0}))


def _cells(tmp_path: Path):
    spec = StudySpec.from_params(SPEC)
    _write_metrics(tmp_path / "m")
    cells = study_cells(collect_runs(tmp_path / "m", spec), spec)
    return spec, cells, {(c.task, c.init, c.fraction): c for c in cells}


def test_cells_mean_spread_and_missing_runs(tmp_path) -> None:
    _, cells, index = _cells(tmp_path)
    assert len(cells) == 2 * 3 * 2 and all(len(c.runs) == 2 for c in cells)
    c = index["detection", "gpicture", 0.25]
    assert c.mean == pytest.approx(0.32) and c.spread == pytest.approx(0.02) and c.complete
    assert format_cell(c) == "32.0 ± 2.0"
    one = index["detection", "noteacher", 0.1]
    assert one.values == [0.05] and not one.complete and [r.status for r in one.runs] == ["ok", "missing"]
    assert format_cell(one) == "5.0 (1 seed) (s1 missing)"
    gone = index["segmentation", "scratch", 0.1]
    assert gone.mean is None and gone.spread is None and format_cell(gone) == "missing"
    null = index["segmentation", "noteacher", 0.1]
    assert [r.status for r in null.runs] == ["undefined", "ok"] and format_cell(null) == "10.0 (1 seed) (s0 n/a)"


def test_gains_and_the_exceeds_spread_marker(tmp_path) -> None:
    _, cells, _ = _cells(tmp_path)
    gains = {(g.task, g.fraction, g.baseline): g for g in study_gains(cells)}
    assert len(gains) == 2 * 2 * 2 and {g.init for g in gains.values()} == {"gpicture"}
    g = gains["detection", 0.25, "scratch"]
    assert g.gain == pytest.approx(0.11) and g.exceeds is True
    assert gains["detection", 0.25, "noteacher"].exceeds is False   # +1.0 within gpicture's spread 2.0
    assert gains["detection", 0.1, "scratch"].exceeds is False      # +2.0 within 5.0
    assert gains["detection", 0.1, "noteacher"].exceeds is None     # a seed missing: no verdict
    assert gains["detection", 0.1, "noteacher"].gain == pytest.approx(0.10)
    assert gains["segmentation", 0.1, "scratch"].gain is None       # scratch missing
    assert gains["segmentation", 0.25, "noteacher"].exceeds is True


def test_report_tables_markers_verdicts_and_missing(tmp_path) -> None:
    spec, cells, _ = _cells(tmp_path)
    md = markdown_report(spec, cells, study_gains(cells))
    assert "(max − min) / 2" in md and "✓ the gain exceeds the spread of both cells" in md
    assert "**3 of 24 planned runs are missing**" in md
    det = md[md.index("### detection (mAP, %)"):md.index("### segmentation")]
    assert "| initialisation | 10% labels | 25% labels |" in det
    assert "| GPICTURE | 15.0 ± 5.0 | 32.0 ± 2.0 |" in det
    assert "| GPICTURE w/o teacher targets | 5.0 (1 seed) (s1 missing) | 31.0 ± 1.0 |" in det
    assert "| gain GPICTURE − scratch | +2.0 | +11.0 ✓ |" in det
    assert "| gain GPICTURE − no-teacher | +10.0 ? | +1.0 |" in det
    seg = md[md.index("### segmentation"):md.index("## Verdict")]
    assert "| scratch | missing | 30.5 ± 0.5 |" in seg and "| gain GPICTURE − scratch | missing | +20.5 ✓ |" in seg
    verdict = md[md.index("## Verdict at 25%"):md.index("## Every run")]
    assert "GPICTURE beats scratch by more than the spread of either on every task: **met**" in verdict
    assert "GPICTURE beats no-teacher by more than the spread of either on at least one task: **met**" in verdict
    assert "| segmentation | scratch | — / — | 30.0 / 31.0 |" in md  # every run, per seed

    worse = {**VALUES, ("segmentation", "scratch", 0.25): (0.50, 0.52)}   # segmentation: no gain at 25%
    shutil.rmtree(tmp_path / "m")
    _write_metrics(tmp_path / "m", worse)
    cells = study_cells(collect_runs(tmp_path / "m", spec), spec)
    md = markdown_report(spec, cells, study_gains(cells))
    assert "on every task: **not met** (detection +11.0 ✓, segmentation +0.0)" in md


def test_write_report_files_and_refusals(tmp_path) -> None:
    spec = StudySpec.from_params(SPEC)
    _write_metrics(tmp_path / "m")
    live = run_path(tmp_path / "runs", "detection", "gpicture", 0.25, 0) / "dvclive" / "plots" / "metrics"
    live.mkdir(parents=True)
    (live / "loss.tsv").write_text("timestamp\tstep\tloss\n1\t0\t3.0\n2\t1\t2.0\n")
    cells = write_report(tmp_path / "m", tmp_path / "out", spec, tmp_path / "runs")
    assert len(cells) == 12 and "32.0 ± 2.0" in (tmp_path / "out" / "study.md").read_text()
    assert (tmp_path / "out" / "study.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "study-curves.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="none of the 24 planned study runs"):
        write_report(tmp_path / "empty", tmp_path / "out2", spec)
    run_metrics_path(tmp_path / "m", "detection", "scratch", 0.1, 0).write_text("{}")
    with pytest.raises(ValueError, match="no metric 'mAP'"):
        write_report(tmp_path / "m", tmp_path / "out3", spec)
    with pytest.raises(ValueError, match="claim_fraction"):
        StudySpec.from_params({**SPEC, "claim_fraction": 0.5})
    with pytest.raises(ValueError, match="no metric for occupancy"):
        StudySpec.from_params({**SPEC, "tasks": ["detection", "occupancy"]})


# ------------------------------------------------------------------------------------------------
# the study stages of dvc.yaml
# ------------------------------------------------------------------------------------------------


def _stages(root: Path) -> dict:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {s.name: {"cmd": s.cmd, "deps": {d.def_path for d in s.deps},
                               "outs": {o.def_path for o in s.outs},
                               "metrics": {o.def_path for o in s.outs if o.metric},
                               "plots": {o.def_path for o in s.outs if o.plot}}
                for s in repo.index.stages}


def test_study_stages_expand_from_params_with_each_inits_dependency(tmp_path) -> None:
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True).close()
    shutil.copy2(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    study = params["study"]
    study.update(fractions=[0.1, 1.0], seeds=[3, 5], tasks=["detection", "occupancy"], claim_fraction=0.1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = _stages(tmp_path)
    runs = {n: s for n, s in stages.items() if n.startswith("study_") and n != "study_report"}
    assert set(runs) == {f"study_{i}@{t}" for t in ("detection", "occupancy") for i in study["inits"]}
    students = {study["inits"]["gpicture"], study["inits"]["noteacher"]}
    for init in study["inits"]:
        s = runs[f"study_{init}@occupancy"]
        assert s["cmd"] == f"gpicture study-run --task occupancy --init {init}"
        assert s["deps"] & students == ({study["inits"][init]} if init != "scratch" else set())
        assert not any(d.startswith("models/") for d in s["deps"] - students)
        assert {"data/zarr/nuscenes/train.zarr", "data/zarr/nuscenes/val.zarr", "gpicture/training",
                "stages/study_run.py"} <= s["deps"]
        assert s["outs"] == {f"models/study/occupancy/{init}", f"metrics/study/occupancy/{init}"}
    # the runs a stage plans follow params too (gpicture study-run)
    spec = StudySpec.from_params(study)
    jobs = plan(spec, "occupancy", "noteacher", study["inits"]["noteacher"], tmp_path / "params.yaml")
    assert [(j.fraction, j.seed) for j in jobs] == [(1.0, 3), (1.0, 5), (0.1, 3), (0.1, 5)]   # longest first
    assert jobs[2].run_dir == Path("models/study/occupancy/noteacher/0.1-s3")
    assert jobs[2].metrics == Path("metrics/study/occupancy/noteacher/0.1-s3.json")
    assert jobs[2].init == study["inits"]["noteacher"]
    assert {"metrics/study", "models/study", "gpicture/study.py"} <= stages["study_report"]["deps"]
    assert "reports/study.png" in stages["study_report"]["outs"]


# ------------------------------------------------------------------------------------------------
# the fine-tuning seed
# ------------------------------------------------------------------------------------------------


def test_label_subset_is_seeded_nested_and_never_empty() -> None:
    assert label_subset(12, 0.1, 0) == label_subset(12, 0.1, 0) and len(label_subset(12, 0.1, 0)) == 1
    assert len({tuple(label_subset(12, 0.25, s)) for s in range(4)}) > 1   # another seed, another subset
    for seed in (0, 1):
        subsets = [set(label_subset(12, f, seed)) for f in (0.1, 0.25, 0.5, 1.0)]
        assert [len(s) for s in subsets] == [1, 3, 6, 12]
        assert all(a < b for a, b in itertools.pairwise(subsets))   # nested over the fractions
    assert label_subset(12, 1.0, 0) == label_subset(12, 1.0, 1) == list(range(12))


def test_finetune_seed_option_reaches_the_run(monkeypatch, tmp_path) -> None:
    seen = []
    monkeypatch.setattr(finetune_stage, "run_finetune", lambda task, settings, run: seen.append(run) or {})
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["finetune"]["seed"] = 4
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    base = ["finetune", "--task", "detection", "--dataset", "nuscenes", "--init", "scratch", "--label-fraction",
            "0.25", "--out", str(tmp_path / "o"), "--procs", "1", "--params", str(tmp_path / "params.yaml")]
    for extra, seed in (([], 4), (["--seed", "7"], 7)):
        r = CliRunner().invoke(app, base + extra)
        assert r.exit_code == 0, r.output
        assert seen[-1].train.seed == seed and seen[-1].label_fraction == 0.25


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seed")
    generate_nuscenes(SynthConfig(scenes=3, frames=2, sweeps_before=1, seed=6, occupancy=False, workers=2), root / "raw")
    grid = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.4, 0.4, 0.4))
    convert(ConvertConfig("nuscenes", root / "raw", "mini_val", grid, sweeps=1), root / "s.zarr")
    return root / "s.zarr"


def test_finetune_seed_draws_the_subset_and_the_init(store, tmp_path) -> None:
    def run(seed: int, name: str) -> tuple[list[int], dict]:
        cfg = TrainConfig(epochs=0, batch_size=2, lr=1e-3, weight_decay=0.01, seed=seed)   # the initial weights
        finetune(DetectionTask(), DetectionConfig(head=DetectionHead(head_stride=2)),
                 FinetuneRun(NUSCENES, TINY, store, tmp_path / name, cfg, DistInfo(), label_fraction=0.5,
                             progress=False))
        report = json.loads((tmp_path / name / "init_report.json").read_text())
        assert report["seed"] == seed and len(report["frame_indices"]) == report["frames"]
        return report["frame_indices"], torch.load(tmp_path / name / "model.pt", weights_only=False)["state"]

    a, b = run(0, "a"), run(0, "b")
    assert a[0] == b[0] and all(torch.equal(a[1][k], b[1][k]) for k in a[1])   # deterministic
    n = len(DetectionTask().labelled_frames(VoxelStore.open(store), NUSCENES))
    seed = next(s for s in range(1, 20) if label_subset(n, 0.5, s) != label_subset(n, 0.5, 0))
    c = run(seed, "c")
    assert c[0] != a[0]                                                        # another labelled subset
    assert any(not torch.equal(a[1][k], c[1][k]) for k in a[1] if a[1][k].is_floating_point())   # another init


# ------------------------------------------------------------------------------------------------
# gpicture study-run: the runs of one (task, init), two at a time
# ------------------------------------------------------------------------------------------------


def test_study_run_fine_tunes_and_scores_every_fraction_and_seed(tmp_path, monkeypatch) -> None:
    """Real fine-tunes (1 epoch) and official scoring of 2 fractions x 2 seeds in 2 worker
    processes, laid out as study_report reads them; a missing student is refused up front."""
    generate_nuscenes(SynthConfig(scenes=4, frames=2, sweeps_before=1, seed=5, occupancy=False, workers=2),
                      tmp_path / "data" / "raw" / "nuscenes")
    grid = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.4, 0.4, 0.4))
    monkeypatch.chdir(tmp_path)
    for split, name in (("train", "mini_train"), ("val", "mini_val")):
        convert(ConvertConfig("nuscenes", Path("data/raw/nuscenes"), name, grid, sweeps=1),
                Path(f"data/zarr/nuscenes/{split}.zarr"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["finetune"]["segmentation"]["epochs"] = 1
    params["study"].update(tasks=["segmentation"], fractions=[0.5, 1.0], seeds=[0, 1], jobs=2, claim_fraction=0.5)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    r = CliRunner().invoke(app, ["study-run", "--task", "segmentation", "--init", "scratch", "--params", "params.yaml"])
    assert r.exit_code == 0, r.output
    for fraction in (0.5, 1.0):
        for seed in (0, 1):
            m = json.loads(run_metrics_path(Path("metrics/study"), "segmentation", "scratch", fraction, seed).read_text())
            assert 0 <= m["mIoU"] <= 1
            run = run_path(Path("models/study"), "segmentation", "scratch", fraction, seed)
            report = json.loads((run / "init_report.json").read_text())
            assert report["seed"] == seed and report["frames"] == (2 if fraction == 0.5 else 4)
            assert (run / "model.pt").is_file() and (run / "dvclive").is_dir()
            assert not (run / "checkpoint.pt").exists()
    r = CliRunner().invoke(app, ["study-run", "--task", "segmentation", "--init", "noteacher", "--params", "params.yaml"])
    assert r.exit_code == 2 and "study.inits.noteacher" in r.output and "is not there" in r.output


def test_finetune_with_two_data_parallel_processes(store, tmp_path) -> None:
    """`gpicture finetune --procs 2`: two single-thread DDP processes (gpicture.training.launch)
    train one model; rank 0 writes it and its curves, with the epoch's frames/s."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"]["profiles"]["small"]["nuscenes"].update(TINY)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    r = CliRunner().invoke(app, ["finetune", "--task", "segmentation", "--dataset", "nuscenes", "--init", "scratch",
                                 "--store", str(store), "--out", str(tmp_path / "o"), "--epochs", "1", "--procs", "2",
                                 "--params", str(tmp_path / "params.yaml")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "model.pt").is_file()
    live = json.loads((tmp_path / "o" / "dvclive" / "metrics.json").read_text())
    assert live["frames_per_s"] > 0 and live["loss"] > 0
