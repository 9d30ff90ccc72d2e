"""Scenes to datasets: simulate nuScenes-like scenes and Waymo-like segments
(:mod:`gpicture.synth.simulate`) and write them in the real formats, in parallel over
scenes in a process pool, atomically.

The output folder is built under a temporary sibling and moved into place only
when complete, so an interrupted run never leaves something that looks finished.

Beside a dataset's labelled scenes (train and val), ``generate_*_pretrain`` write its
*pre-training pool*: more scenes of the same world, from their own seed stream
(``scene_seed(seed, "<dataset>-pretrain", k)``), in a raw root of their own, with names,
tokens and contexts no labelled scene has. They are written with their annotations like
any raw data; ``gpicture convert`` reads the pool as the unlabelled ``pretrain`` split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gpicture.atomic import OutputError, claim_output, into_place, temp_sibling
from gpicture.data.spec import NUSCENES, WAYMO
from gpicture.synth import nuscenes_writer
from gpicture.synth.config import SynthConfig, SynthError
from gpicture.synth.simulate import simulate_nuscenes_scene, simulate_waymo_segment
from gpicture.synth.waymo_writer import write_segment
from gpicture.workers import pool_as_completed

__all__ = ["SynthConfig", "SynthError", "generate_nuscenes", "generate_nuscenes_pretrain", "generate_waymo",
           "generate_waymo_pretrain", "nuscenes_pretrain_names", "nuscenes_scene_names", "pretrain_stream",
           "scene_seed", "split_counts"]

PRETRAIN_VERSION = "v1.0-trainval"  # the nuScenes pool: scenes of the trainval train list (mini has 10 names)


def pretrain_stream(dataset: str) -> str:
    """The seed stream (``scene_seed``'s key) of a dataset's pre-training pool."""
    return f"{dataset}-pretrain"


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


def nuscenes_pretrain_names(n: int, labelled: list[str]) -> list[str]:
    """Names of n pre-training pool scenes: the trainval train list from its end, without the
    scenes of v1.0-mini (a subset of trainval), so the same whatever the labelled scenes are;
    SynthError if they meet the ``labelled`` names (a v1.0-trainval labelled set of ~700 scenes)."""
    from nuscenes.utils.splits import create_splits_scenes  # the devkit, only when used (as above)

    splits = create_splits_scenes()
    mini = set(splits["mini_train"]) | set(splits["mini_val"])
    names = [s for s in reversed(splits["train"]) if s not in mini][:n]
    if len(names) < n or set(names) & set(labelled):
        raise SynthError(f"{n} pre-training scenes do not fit beside {len(labelled)} labelled ones in the "
                         f"{len(splits['train'])} train-list names: use fewer scenes")
    return names


@contextmanager
def _build(out: Path, force: bool, kind: str) -> Iterator[Path]:
    """Claim ``out`` (one writer; ``--force`` replaces only a ``kind`` this project wrote) and
    yield a temporary sibling to build the dataset in, moved into place when the block ends
    (SynthError if ``out`` is in the way, taken, or its folder cannot be written)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SynthError(f"{out}: exists and is not a folder")
    empty = out.is_dir() and not any(out.iterdir())
    try:
        with claim_output(out, kind, force=force, exist_ok=empty) as lock:
            try:
                tmp = temp_sibling(out)
            except OSError as exc:
                raise SynthError(f"{out}: cannot write there ({exc.strerror or exc})") from exc
            with into_place(tmp, out, kind, lock) as tmp:
                yield tmp
    except OutputError as exc:  # taken by another writer, in the way, or the claim was lost
        raise SynthError(str(exc)) from None


def generate_nuscenes(cfg: SynthConfig, out: Path, force: bool = False,
                      progress: Callable[[int, int], None] | None = None) -> dict:
    """Write ``cfg.scenes`` scenes as a nuScenes dataset (``cfg.version``) under ``out``."""
    # The devkit is imported only when used (a Waymo-only run and the CLI's start do without).
    from nuscenes.utils.splits import create_splits_scenes

    cfg.validate()
    names = nuscenes_scene_names(cfg.scenes, cfg.version, cfg.val_fraction)
    val_split = create_splits_scenes()["mini_val" if cfg.version == "v1.0-mini" else "val"]
    n_val = sum(n in val_split for n in names)
    summary = _nuscenes(cfg, names, NUSCENES.name, cfg.version, 1_532_402_927_000_000, out, force, progress)
    return {"scenes": len(names), "train": len(names) - n_val, "val": n_val, **summary}


def generate_nuscenes_pretrain(cfg: SynthConfig, out: Path, labelled: SynthConfig, force: bool = False,
                               progress: Callable[[int, int], None] | None = None) -> dict:
    """Write ``cfg.scenes`` pre-training pool scenes as a v1.0-trainval nuScenes dataset under
    ``out``: names of the train list (:func:`nuscenes_pretrain_names`, none of the ``labelled``
    dataset's), seeds of the pool's stream, a later month than the labelled scenes."""
    cfg.validate()
    names = nuscenes_pretrain_names(cfg.scenes, nuscenes_scene_names(labelled.scenes, labelled.version,
                                                                      labelled.val_fraction))
    summary = _nuscenes(cfg, names, pretrain_stream(NUSCENES.name), PRETRAIN_VERSION, 1_535_000_000_000_000, out,
                        force, progress)
    return {"scenes": len(names), "pretrain": len(names), **summary}


def _nuscenes(cfg: SynthConfig, names: list[str], stream: str, version: str, base_time_us: int, out: Path,
              force: bool, progress: Callable[[int, int], None] | None) -> dict:
    """Simulate scenes ``names`` (seeds of ``stream``, an hour apart) and write them under ``out``."""
    jobs = [(nm, scene_seed(cfg.seed, stream, i), cfg, base_time_us + i * 3_600_000_000) for i, nm in enumerate(names)]
    with _build(out, force, f"synthetic-{NUSCENES.name}") as tmp:
        scenes = run_parallel(simulate_nuscenes_scene, jobs, cfg.workers, progress)
        nuscenes_writer.write_nuscenes(scenes, tmp, version=version)
    return {"sweeps": sum(len(s.sweeps) for s in scenes),
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
    folders = ["training"] * n_train + ["validation"] * n_val
    frames = _waymo(cfg, folders, WAYMO.name, out, force, progress)
    return {"segments": cfg.scenes, "train": n_train, "val": n_val, "frames": frames}


def generate_waymo_pretrain(cfg: SynthConfig, out: Path, force: bool = False,
                            progress: Callable[[int, int], None] | None = None) -> dict:
    """Write ``cfg.scenes`` pre-training pool segments (seeds of the pool's stream) as Waymo
    tfrecords under ``out/training``: more training segments, for their LiDAR only."""
    cfg.validate()
    frames = _waymo(cfg, ["training"] * cfg.scenes, pretrain_stream(WAYMO.name), out, force, progress)
    return {"segments": cfg.scenes, "pretrain": cfg.scenes, "frames": frames}


def _waymo(cfg: SynthConfig, folders: list[str], stream: str, out: Path, force: bool,
           progress: Callable[[int, int], None] | None) -> int:
    """Segment i (seed i of ``stream``) into ``out/<folders[i]>``; the frames written."""
    with _build(out, force, f"synthetic-{WAYMO.name}") as tmp:
        jobs = []
        for i, name in enumerate(folders):
            (tmp / name).mkdir(exist_ok=True)
            jobs.append((tmp / name, scene_seed(cfg.seed, stream, i), cfg))
        return int(sum(run_parallel(_waymo_job, jobs, cfg.workers, progress)))


def run_parallel(fn: Callable, jobs: list[tuple], workers: int,
                  progress: Callable[[int, int], None] | None) -> list:
    """``[fn(*job) for job in jobs]``, over up to ``workers`` processes, reporting ``progress``."""
    results: list = [None] * len(jobs)
    # Workers terminated on Ctrl-C / SIGTERM / a failing scene (gpicture.workers).
    for done, (i, result) in enumerate(pool_as_completed(fn, jobs, workers), start=1):
        results[i] = result
        if progress:
            progress(done, len(jobs))
    return results
