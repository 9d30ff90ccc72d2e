"""Teacher features computed in one clone are pushed to a DVC remote and pulled into a
second clone, whose `dvc repro` does not recompute them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

STAGE = "teacher@nuscenes-val"


def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _tiny_params(path: Path) -> None:
    p = yaml.safe_load(path.read_text())
    p["synth"]["nuscenes"].update(scenes=3, frames=1, sweeps_before=1, occupancy=False)
    p["convert"]["nuscenes"]["sweeps"] = 2
    p["teacher"]["standin"].update(steps=1, crop_deg=30.0)  # the stand-in upstream of the stage, tiny
    p["teacher"]["standin"]["pool"].update(scenes=1, frames=1)
    path.write_text(yaml.safe_dump(p, sort_keys=False))


def test_teacher_cache_travels_through_a_local_remote(repo_root, venv_bin, tmp_path) -> None:
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    dvc = str(venv_bin / "dvc")
    a, b, remote = tmp_path / "a", tmp_path / "b", tmp_path / "remote"
    _run(["git", "clone", "-q", str(repo_root), str(a)], tmp_path, env)
    _tiny_params(a / "params.yaml")
    out = _run([dvc, "repro", STAGE], a, env)
    assert f"Running stage '{STAGE}'" in out
    _run([dvc, "remote", "add", "-d", "shared", str(remote)], a, env)
    _run(["git", "add", "-A"], a, env)
    _run(["git", "commit", "-qm", "tiny teacher run"], a, env)
    _run([dvc, "push", "--run-cache"], a, env)

    _run(["git", "clone", "-q", str(a), str(b)], tmp_path, env)
    _run([dvc, "pull", "--with-deps", STAGE], b, env)  # this stage's outputs and everything upstream
    teacher = Path("data/teacher/nuscenes/val.zarr")
    assert (b / teacher / "zarr.json").exists()
    out = _run([dvc, "repro", STAGE], b, env)
    assert "Running stage" not in out, out  # nothing recomputed: the pulled cache is up to date
    files = sorted(p.relative_to(a / teacher) for p in (a / teacher).rglob("*") if p.is_file())
    assert files and all((a / teacher / f).read_bytes() == (b / teacher / f).read_bytes() for f in files)
