"""Scenes to datasets: simulate nuScenes-like scenes and Waymo-like segments
(:mod:`gpicture.synth.simulate`) and write them in the real formats, in parallel over
scenes in a process pool, atomically.

The output folder is built under a temporary sibling and moved into place only
when complete, so an interrupted run never leaves something that looks finished.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from gpicture.atomic import into_place, temp_sibling
from gpicture.data.spec import NUSCENES, WAYMO
from gpicture.synth import nuscenes_writer
from gpicture.synth.config import SynthConfig, SynthError
from gpicture.synth.simulate import simulate_nuscenes_scene, simulate_waymo_segment
from gpicture.synth.waymo_writer import write_segment

__all__ = ["SynthConfig", "SynthError", "generate_nuscenes", "generate_waymo", "nuscenes_scene_names",
           "scene_seed", "split_counts"]


def scene_seed(seed: int, dataset: str, index: int) -> int:
    """A stable per-scene seed (independent of the number of scenes and workers)."""
    return int.from_bytes(hashlib.sha256(f"{dataset}:{seed}:{index}".encode()).digest()[:8], "little")


def split_counts(n: int, val_fraction: float) -> tuple[int, int]:
    """(train, val) scene counts: at least one val scene when there are two or more."""
    n_val = 0 if n < 2 else max(1, round(n * val_fraction))
    return n - n_val, n_val


def nuscenes_scene_names(n: int, version: str, val_fraction: float) -> list[str]:
    """Official scene names for n generated scenes, so the devkit's split lists place them.

    ``v1.0-mini`` uses the mini split (8 train, 2 val scenes; both val scenes as soon as
    n >= 3, because the lidarseg evaluation expects every scene of its split);
    ``v1.0-trainval`` takes names from the train and val lists.
    """
    # The devkit is imported only when used (a Waymo-only run and the CLI's start do without).
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    if version == "v1.0-mini":
        if n > 10:
            raise SynthError(f"v1.0-mini has 10 scenes, {n} asked for: use version v1.0-trainval")
        n_val = min(2, max(n - 1, 0))
        return splits["mini_train"][: n - n_val] + splits["mini_val"][:n_val]
    n_train, n_val = split_counts(n, val_fraction)
    return splits["train"][:n_train] + splits["val"][:n_val]


def _temp_folder(out: Path, force: bool) -> Path:
    """A new temporary sibling of ``out`` to build the dataset in (SynthError if ``out`` is in
    the way, or its folder cannot be written)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SynthError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise SynthError(f"{out}: exists and is not empty (use --force to replace it)")
    try:
        return temp_sibling(out)
    except OSError as exc:
        raise SynthError(f"{out}: cannot write there ({exc.strerror or exc})") from exc


def generate_nuscenes(cfg: SynthConfig, out: Path, force: bool = False,
                      progress: Callable[[int, int], None] | None = None) -> dict:
    """Write ``cfg.scenes`` scenes as a nuScenes dataset (``cfg.version``) under ``out``."""
    # The devkit is imported only when used (a Waymo-only run and the CLI's start do without).
    from nuscenes.utils.splits import create_splits_scenes

    cfg.validate()
    names = nuscenes_scene_names(cfg.scenes, cfg.version, cfg.val_fraction)
    val_split = create_splits_scenes()["mini_val" if cfg.version == "v1.0-mini" else "val"]
    n_val = sum(n in val_split for n in names)
    n_train = len(names) - n_val
    jobs = [(nm, scene_seed(cfg.seed, NUSCENES.name, i), cfg, 1_532_402_927_000_000 + i * 3_600_000_000)
            for i, nm in enumerate(names)]
    with into_place(_temp_folder(out, force), out) as tmp:
        scenes = run_parallel(simulate_nuscenes_scene, jobs, cfg.workers, progress)
        nuscenes_writer.write_nuscenes(scenes, tmp, version=cfg.version)
    n_sweeps = sum(len(s.sweeps) for s in scenes)
    return {"scenes": len(scenes), "train": n_train, "val": n_val, "sweeps": n_sweeps,
            "keyframes": sum(sw.is_key_frame for s in scenes for sw in s.sweeps)}


def _waymo_job(folder: Path, seed: int, cfg: SynthConfig) -> int:
    """Simulate one segment and write it under ``folder`` (in the worker: frames are large)."""
    context, frames = simulate_waymo_segment(seed, cfg)
    write_segment(frames, folder / f"segment-{context}_with_camera_labels.tfrecord", zlib_level=cfg.zlib_level)
    return len(frames)


def generate_waymo(cfg: SynthConfig, out: Path, force: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> dict:
    """Write ``cfg.scenes`` segments as Waymo tfrecords under ``out/{training,validation}``."""
    cfg.validate()
    n_train, n_val = split_counts(cfg.scenes, cfg.val_fraction)
    with into_place(_temp_folder(out, force), out) as tmp:
        jobs = []
        for i in range(cfg.scenes):
            folder = tmp / ("training" if i < n_train else "validation")
            folder.mkdir(exist_ok=True)
            jobs.append((folder, scene_seed(cfg.seed, WAYMO.name, i), cfg))
        frames = run_parallel(_waymo_job, jobs, cfg.workers, progress)
    return {"segments": cfg.scenes, "train": n_train, "val": n_val, "frames": int(sum(frames))}


def run_parallel(fn: Callable, jobs: list[tuple], workers: int,
                  progress: Callable[[int, int], None] | None) -> list:
    """``[fn(*job) for job in jobs]``, over up to ``workers`` processes, reporting ``progress``."""
    results: list = [None] * len(jobs)
    if workers <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            results[i] = fn(*job)
            if progress:
                progress(i + 1, len(jobs))
        return results
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
        for done, fut in enumerate(as_completed(futures), start=1):
            results[futures[fut]] = fut.result()
            if progress:
                progress(done, len(jobs))
    return results
