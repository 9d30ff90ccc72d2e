"""Shared pytest fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """The bin/ folder of the interpreter running the tests (the project's .venv)."""
    return Path(sys.executable).parent


@pytest.fixture(scope="session")
def tiny_train_world(tmp_path_factory) -> dict[str, Path]:
    """A tiny synthetic nuScenes training set, built once for the suite: the raw data (3 scenes of
    2 keyframes, one sweep before each), its voxel store at 0.4 m and the stand-in teacher's store
    of it. The determinism and multi-rank interrupt tests train on it with their own params."""
    from gpicture.data.convert import ConvertConfig, convert
    from gpicture.data.voxelize import VoxelGrid
    from gpicture.synth.generate import SynthConfig, generate_nuscenes
    from gpicture.teacher import SealTeacher
    from gpicture.teacher.cache import TeacherConfig, build_teacher_store

    root = tmp_path_factory.mktemp("tiny-train")
    generate_nuscenes(SynthConfig(scenes=3, frames=2, sweeps_before=1, seed=8, occupancy=False, workers=2),
                      root / "raw")
    grid = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.4, 0.4, 0.4))
    convert(ConvertConfig("nuscenes", root / "raw", "mini_train", grid, sweeps=2), root / "train.zarr")
    build_teacher_store(root / "train.zarr", root / "teacher.zarr", SealTeacher.from_checkpoint(None),
                        TeacherConfig(input_scale=1 / 255, keyframe_only=False))
    return {"raw": root / "raw", "store": root / "train.zarr", "teacher": root / "teacher.zarr"}
