"""The stand-in teacher's pool: synthetic nuScenes keyframes no other stage ever sees.

Seal learnt from the nuScenes training scenes with images; the stand-in learns from
scenes of the same procedural world, simulated in memory from their own seed stream
(``scene_seed(seed, POOL_TAG, k)``, a key no pipeline scene is drawn from: those use the
dataset name, the pre-training pools ``<dataset>-pretrain``) and named ``teacher-pool-<seed>-<k>`` (no official scene name, so no
token the devkit writer derives from a name can coincide). Only keyframes are cast,
without sweeps or occupancy. Labels come from the simulator (the surface each ray hit);
they stand for what the vision foundation model knows in Seal, and are used by
``teacher_fit`` only, never by pre-training.

Frames: points in the LIDAR_TOP sensor frame (as the stores hold them), metres;
intensity 0..255 as nuScenes writes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gpicture.data.spec import NUSCENES
from gpicture.data.taxonomy import NUSCENES_CATEGORIES
from gpicture.synth.config import SynthConfig
from gpicture.synth.generate import run_parallel, scene_seed
from gpicture.synth.nuscenes_writer import token
from gpicture.synth.simulate import simulate_nuscenes_scene

POOL_TAG = "nuscenes-teacher-pool"  # the seed stream's key: never a dataset name


@dataclass(frozen=True)
class PoolConfig:
    """How many pool scenes, of how many keyframes, from which seed (params ``teacher.standin``)."""

    scenes: int = 8
    frames: int = 4
    seed: int = 0
    density: float = 0.6
    workers: int = 1

    def validate(self) -> None:
        if self.scenes < 1 or self.frames < 1 or self.workers < 1 or self.density <= 0:
            raise ValueError(f"teacher pool needs scenes, frames, workers >= 1 and density > 0, got {self}")

    def scene_seeds(self) -> list[int]:
        return [scene_seed(self.seed, POOL_TAG, k) for k in range(self.scenes)]

    def scene_names(self) -> list[str]:
        return [f"teacher-pool-{self.seed}-{k:04d}" for k in range(self.scenes)]


@dataclass(frozen=True)
class PoolFrame:
    """One labelled pool keyframe.

    points (N, 3) float32 sensor frame, m; intensity (N,) float32 0..255; labels (N,) int64
    nuScenes lidarseg evaluation class (0: ignore); instance (N,) int64 object instance
    (0: stuff), unique within the scene; scene: index of the pool scene.
    """

    points: np.ndarray
    intensity: np.ndarray
    labels: np.ndarray
    instance: np.ndarray
    scene: int


def eval_classes() -> tuple[list[str], np.ndarray]:
    """The nuScenes lidarseg evaluation classes (index 0 ignore) and the raw -> eval lookup."""
    return NUSCENES.segmentation_eval_classes(list(NUSCENES_CATEGORIES))


def pool_tokens(cfg: PoolConfig) -> dict[str, list[str]]:
    """The scene and sample tokens the nuScenes writer would give the pool's scenes (the
    pool is never written; these are what a disjointness check compares)."""
    names = cfg.scene_names()
    return {"scene_tokens": [token("scene", n) for n in names],
            "sample_tokens": [token("sample", n, k) for n in names for k in range(cfg.frames)]}


def simulate_pool(cfg: PoolConfig, progress: Callable[[int, int], None] | None = None) -> list[PoolFrame]:
    """Simulate the pool's keyframes (in memory; ``cfg.workers`` processes over scenes)."""
    cfg.validate()
    synth = SynthConfig(scenes=cfg.scenes, frames=cfg.frames, seed=cfg.seed, density=cfg.density, sweeps_before=0,
                        occupancy=False, val_fraction=0.0)
    jobs = [(name, seed, synth, 1_600_000_000_000_000 + k * 3_600_000_000, True)
            for k, (name, seed) in enumerate(zip(cfg.scene_names(), cfg.scene_seeds(), strict=True))]
    scenes = run_parallel(simulate_nuscenes_scene, jobs, cfg.workers, progress)
    _, lut = eval_classes()
    frames = []
    for k, scene in enumerate(scenes):
        for sw in scene.sweeps:
            if sw.is_key_frame:
                frames.append(PoolFrame(sw.points[:, :3].copy(), sw.points[:, 3].copy(), lut[sw.lidarseg],
                                        sw.instance.astype(np.int64), k))
    return frames
