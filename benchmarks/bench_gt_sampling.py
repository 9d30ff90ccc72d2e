"""Ground-truth sampling (GT-paste) speed.

Run: .venv/bin/python benchmarks/bench_gt_sampling.py
On freshly generated synthetic nuScenes (10 sweeps per frame, all ten detection classes) measures:
the object database build (frames/s, objects/s, its size), ``paste`` per frame, and a training
item of DetectionDataset (read, paste, augment, voxelize) with and without GT sampling.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gpicture.data.convert import ConvertConfig, convert
from gpicture.data.spec import NUSCENES
from gpicture.data.store import VoxelStore
from gpicture.data.voxelize import VoxelGrid
from gpicture.synth.generate import SynthConfig, generate_nuscenes
from gpicture.tasks.detection.data import DetectionDataset
from gpicture.tasks.detection.gt_sampling import GTDatabase, GTSamplingConfig, paste
from gpicture.training.augment import AugmentConfig

FEATURES = ["intensity", "time_lag"]
# Target objects per frame and class (a frame with fewer gets the difference, collisions permitting).
TARGETS = {
    "car": 20,
    "truck": 6,
    "construction_vehicle": 4,
    "bus": 4,
    "trailer": 4,
    "barrier": 8,
    "motorcycle": 6,
    "bicycle": 6,
    "pedestrian": 15,
    "traffic_cone": 8,
}


def main() -> None:
    torch.set_num_threads(1)
    tasks, cmap = [list(g) for g in NUSCENES.detection_groups], NUSCENES.detection_class_map()
    names = [n for t in tasks for n in t]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_nuscenes(
            SynthConfig(scenes=10, frames=4, sweeps_before=9, seed=0, workers=2, occupancy=False), tmp / "raw"
        )
        grid = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.2, 0.2, 0.2))
        convert(ConvertConfig("nuscenes", tmp / "raw", "mini_train", grid, sweeps=10), tmp / "s.zarr")
        store = VoxelStore.open(tmp / "s.zarr")
        n_frames = len(store)
        n_points = store.attrs["n_points"] / n_frames
        print(f"store: {n_frames} frames x 10 sweeps, {n_points:,.0f} points/frame, {store.attrs['n_boxes']} boxes")

        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            db = GTDatabase.build(tmp / "s.zarr", range(n_frames), names, cmap, FEATURES, min_points=5)
            times.append(time.perf_counter() - t0)
        dt = min(times)
        size = sum(a.nbytes for a in (db.boxes, db.velocity, db.labels, db.frame, db.point_ptr, db.points, db.features))
        print(
            f"database build: {dt:.2f} s for {n_frames} frames -> {n_frames / dt:.1f} frames/s, "
            f"{len(db) / dt:,.0f} objects/s ({len(db)} objects, {len(db.points):,} points, {size / 2**20:.1f} MiB)"
        )
        print("  objects per class:", db.counts_per_class())

        cfg = GTSamplingConfig(TARGETS, min_points=5)
        index = {n: j for j, n in enumerate(names)}
        frames = []
        for k in range(n_frames):
            fr = store[k]
            det = np.array([index.get(cmap.get(n, ""), -1) for n in fr.box_names], dtype=np.int64)
            keep = (det >= 0) & (fr.box_num_points > 0)
            feats = np.stack([fr.features[n] for n in FEATURES], 1).astype(np.float32)
            frames.append((fr.points, feats, fr.boxes[keep], det[keep], np.nan_to_num(fr.box_velocity[keep])))
        rng = np.random.default_rng(0)
        ts, added = [], []
        for rep in range(5):
            for f in frames:
                t0 = time.perf_counter()
                out = paste(*f, db, cfg, rng)
                ts.append(time.perf_counter() - t0)
                if rep == 0:
                    added.append(len(out[2]) - len(f[2]))
        print(
            f"paste: {1e3 * statistics.median(ts):.2f} ms/frame median ({1e3 * max(ts):.2f} max), "
            f"{statistics.mean(added):.1f} objects pasted per frame on average"
        )

        for label, gts in (("without", None), ("with", cfg)):
            ds = DetectionDataset(tmp / "s.zarr", FEATURES, names, cmap, augment_cfg=AugmentConfig(), gt_sampling=gts)
            _ = ds.gt_database  # built outside the timing
            for i in range(len(ds)):  # warm
                ds[i]
            ts = []
            for _ in range(3):
                for i in range(len(ds)):
                    t0 = time.perf_counter()
                    ds[i]
                    ts.append(time.perf_counter() - t0)
            print(f"DetectionDataset item {label} GT sampling: {1e3 * statistics.median(ts):.1f} ms median")


if __name__ == "__main__":
    main()
