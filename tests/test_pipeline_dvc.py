"""The whole DVC pipeline end to end on tiny parameters, in a copy of the repository:
`dvc repro` runs every stage (synth -> convert -> teacher -> pretrain (+ ablation) ->
finetune -> evaluate -> cka -> the study and its report), a second `dvc repro` has nothing to do,
and `dvc exp run -S pretrain.alpha_file=<the cka stage's alpha> pretrain@nuscenes` re-runs
pre-training with the CKA-guided weights from the fine-tuned models; `dvc repro --dry` and DVC's
graph then name what a full run would redo after it (fine-tunes, evaluations, study runs, cka,
figures; never synth, convert, teacher or the scratch runs), and `dvc exp show` lists both runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = {"d_model": 32, "vfe_filters": [32, 32], "dim_feedforward": 48, "set_size": 24}


def _tiny_params(params: dict) -> dict:
    s = params["synth"]
    s["nuscenes"].update(scenes=3, frames=2, sweeps_before=1, occupancy=True)
    s["waymo"].update(scenes=2, frames=2, label_every=1)
    s["pretrain"]["nuscenes"]["scenes"] = 2   # the unlabelled pools: 4 and 2 frames beside 2 train frames
    s["pretrain"]["waymo"]["scenes"] = 1
    for d in ("nuscenes", "waymo"):
        params["model"]["profiles"]["small"][d].update(TINY_MODEL)
    params["teacher"]["batch_frames"] = 2
    params["teacher"]["standin"].update(steps=2, crop_deg=30.0)  # the stand-in's real path, two steps
    params["teacher"]["standin"]["pool"].update(scenes=1, frames=1)
    params["pretrain"].update(epochs=3)
    for task in ("detection", "segmentation", "occupancy"):
        params["finetune"][task]["epochs"] = 1
    params["study"].update(fractions=[0.5], seeds=[0], claim_fraction=0.5,  # every study stage kind, fewer runs
                           tasks=["segmentation"], epochs={"segmentation": 1})  # the cheapest task: the suite's budget
    params["pretrain"]["procs"] = 1   # the tiny runs in one process (launch's processes: tests/test_launch.py)
    params["finetune"]["procs"] = 1
    return params


def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def _stages_run(log: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", log))


@pytest.fixture(scope="module")
def project(tmp_path_factory, venv_bin) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("pipeline") / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:
        if f == "dvc.lock" or not (REPO / f).is_file():
            continue
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, root / f)
    params = _tiny_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "tiny"]):
        _run(cmd, root, env)
    return root, env


@pytest.mark.timeout(1800)
def test_dvc_repro_runs_every_stage_then_nothing_and_exp_run_reruns_only_pretrain_dependents(project) -> None:
    root, env = project
    stages = set(_run(["dvc", "stage", "list", "--name-only"], root, env).split())
    assert len(stages) > 25
    log = _run(["dvc", "repro"], root, env)
    ran = _stages_run(log)
    assert ran == stages, sorted(stages - ran)
    for d in ("nuscenes", "waymo"):
        det = json.loads((root / "metrics" / d / "detection.json").read_text())
        assert ("mAP" in det) if d == "nuscenes" else ("mAP_L1" in det)
        for task in ("segmentation", "occupancy"):
            assert "mIoU" in json.loads((root / "metrics" / d / f"{task}.json").read_text())
    table = (root / "reports" / "study.md").read_text()
    assert "scratch" in table and "50% labels" in table and "w/o teacher" in table
    assert (root / "reports" / "study.png").stat().st_size > 10_000

    again = _run(["dvc", "repro"], root, env)
    assert not _stages_run(again) and "up to date" in again

    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "baseline"], root, env)
    alpha_file = "models/cka/nuscenes/alpha.yaml"
    cka = yaml.safe_load((root / alpha_file).read_text())
    assert len(cka["alpha"]) == 8 and all(0 < a <= 1 + 1e-6 for a in cka["alpha"])
    assert sorted(cka["finetuned"]) == sorted(f"models/{t}/nuscenes/model.pt" for t in ("detection", "segmentation",
                                                                                       "occupancy"))
    # The experiment re-runs pre-training with the CKA-guided weights. DVC re-runs a stage when a dependency
    # changed: `dvc repro --dry` names the stages whose params or inputs now differ, and DVC's graph (`dvc dag`)
    # their descendants, which a full `dvc exp run` would re-run after them. Running those ~30 stages again
    # would show nothing more about the pipeline and would cost minutes of the suite.
    exp = _run(["dvc", "exp", "run", "-S", f"pretrain.alpha_file={alpha_file}", "pretrain@nuscenes"], root, env)
    assert _stages_run(exp) == {"pretrain@nuscenes"}
    import torch

    student = torch.load(root / "models" / "pretrain" / "nuscenes" / "student.pt", weights_only=False)
    assert student["alpha"] == pytest.approx(cka["alpha"])  # pre-trained with the CKA-guided weights
    direct = _stages_run(_run(["dvc", "repro", "--dry"], root, env)) | {"pretrain@nuscenes"}
    assert {"pretrain@waymo", "pretrain_ablation"} <= direct, sorted(direct)  # the new alpha: their params changed
    edges = re.findall(r'"([^"]+)" -> "([^"]+)"', _run(["dvc", "dag", "--dot"], root, env))
    for d in ("nuscenes", "waymo"):  # pre-training reads the unlabelled pretrain split, never the labelled train one
        assert {(f"synth_pretrain@{d}", f"convert_{d}@pretrain"), (f"teacher@{d}-pretrain", f"pretrain@{d}")} <= set(edges)
        assert (f"convert_{d}@train", f"pretrain@{d}") not in edges
    reran = set(direct)
    while True:  # every descendant of a changed stage re-runs after it
        more = {b for a, b in edges if a in reran} - reran
        if not more:
            break
        reran |= more
    untouched = {s for s in stages if s.startswith(("synth@", "synth_pretrain@", "convert_", "teacher_fit@", "teacher@",
                                                    "teacher_probe@", "study_scratch@"))}
    assert not reran & untouched, sorted(reran & untouched)
    assert {"study_report", "figures@nuscenes", "cka@nuscenes", "cka@waymo"} <= reran, sorted(reran)
    assert {s for s in stages if s.startswith(("finetune@", "evaluate@", "study_gpicture@", "study_noteacher@"))} \
        <= reran, sorted(reran)

    show = _run(["dvc", "exp", "show", "--json"], root, env)
    json.loads(show)
    # the baseline and the experiment, each with its pretrain.alpha_file and its metrics
    assert alpha_file in show and "metrics/nuscenes/detection.json" in show
