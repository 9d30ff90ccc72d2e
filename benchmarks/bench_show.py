"""Rendering speed of `gpicture show`: seconds per frame for each view, and a whole split with --all.

Run: .venv/bin/python benchmarks/bench_show.py [--store S --teacher T] [--frames N]
Defaults to the pipeline's default stores (data/zarr/<dataset>/val.zarr and their teacher
stores) when they exist; otherwise generates a small synthetic split. Prints the median time
per view per frame (numpy rasters + matplotlib draw + PNG encoding; the draw + PNG part
separately), and frames/s of ``--all --view bev`` over N frames with one process and with one
per core (spawned processes: their start-up, a few seconds, is included).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from gpicture.viz.render import (
    VIEWS,
    ShowConfig,
    Sources,
    frame_views,
    render_frame,
    show,
)


def _synthetic(tmp: Path) -> list[tuple[Path, Path]]:
    from gpicture.data.convert import ConvertConfig, convert
    from gpicture.data.voxelize import VoxelGrid
    from gpicture.synth.generate import SynthConfig, generate_nuscenes
    from gpicture.teacher import SealTeacher
    from gpicture.teacher.cache import TeacherConfig, build_teacher_store

    generate_nuscenes(SynthConfig(scenes=2, frames=4, seed=0, sweeps_before=9, occupancy=True, val_fraction=0.0),
                      tmp / "raw")
    grid = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.4, 0.4, 0.4))
    convert(ConvertConfig("nuscenes", tmp / "raw", "mini_train", grid, sweeps=10), tmp / "s.zarr")
    build_teacher_store(tmp / "s.zarr", tmp / "t.zarr", SealTeacher.from_checkpoint(None),
                        TeacherConfig(input_scale=1 / 255))
    return [(tmp / "s.zarr", tmp / "t.zarr")]


def bench(store: Path, teacher: Path | None, frames: int, out: Path) -> None:
    src = Sources.open(store, teacher)
    cfg = ShowConfig()
    n = min(frames, len(src.store))
    views = [v for v in VIEWS if v in frame_views("all", src, src.store[0])]
    render_frame(src, 0, views, cfg)  # warm-up: imports, fonts, caches
    per_view: dict[str, list[float]] = {v: [] for v in views}
    png: dict[str, list[float]] = {v: [] for v in views}
    for i in range(n):
        for v in frame_views("all", src, src.store[i]):  # Waymo: occupancy only on labelled frames
            t = time.perf_counter()
            pic = render_frame(src, i, [v], cfg)[v]
            t1 = time.perf_counter()
            pic.png_bytes()
            t2 = time.perf_counter()
            per_view[v].append(t2 - t)
            png[v].append(t2 - t1)
    print(f"{store} ({src.dataset}, {n} frames, {len(src.store[0].points)} points in frame 0)")
    for v in views:
        print(f"  {v:10s} {statistics.median(per_view[v]):6.3f} s/frame   (of which figure draw + PNG "
              f"{statistics.median(png[v]):.3f} s)")
    total = sum(statistics.median(x) for x in per_view.values())
    print(f"  all views  {total:6.3f} s/frame")
    ids = list(range(n))
    t = time.perf_counter()
    show(store, ids, "bev", out_dir=out / "one", cfg=cfg, workers=1, split=True)
    one = time.perf_counter() - t
    cores = os.cpu_count() or 1
    t = time.perf_counter()
    show(store, ids, "bev", out_dir=out / "many", cfg=cfg, workers=cores, split=True)
    many = time.perf_counter() - t
    print(f"  --all --view bev: {n / one:.2f} frames/s on 1 process, {n / many:.2f} frames/s on {cores} "
          f"(x{one / many:.2f}, process start-up included)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path)
    ap.add_argument("--teacher", type=Path)
    ap.add_argument("--frames", type=int, default=6)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if a.store is not None:
            pairs = [(a.store, a.teacher)]
        else:
            pairs = [(Path(f"data/zarr/{d}/val.zarr"), Path(f"data/teacher/{d}/val.zarr")) for d in ("nuscenes", "waymo")]
            pairs = [(s, t if t.exists() else None) for s, t in pairs if s.exists()] or _synthetic(tmp)
        for store, teacher in pairs:
            bench(store, teacher, a.frames, tmp / store.parent.name)


if __name__ == "__main__":
    main()
