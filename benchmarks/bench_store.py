"""Voxel store speed and size against the raw data.

Run: .venv/bin/python benchmarks/bench_store.py
Measures, on freshly generated synthetic nuScenes (10 sweeps per frame) and Waymo:
random-access frame reads from the store against the same frames read raw through
the devkit (``from_file_multisweep`` + ``get_sample_data``; target >= 3x faster),
store bytes against raw bytes, and conversion frames/s on one core.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from gpicture.data.convert import ConvertConfig, convert  # noqa: E402
from gpicture.data.store import VoxelStore  # noqa: E402
from gpicture.data.voxelize import VoxelGrid  # noqa: E402
from gpicture.synth.generate import SynthConfig, generate_nuscenes, generate_waymo  # noqa: E402


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    from nuscenes.nuscenes import NuScenes
    from nuscenes.utils.data_classes import LidarPointCloud

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_nuscenes(SynthConfig(scenes=3, frames=6, seed=0, workers=2, occupancy=False), tmp / "nus")
        grid = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.4, 0.4, 0.4))
        cfg = ConvertConfig("nuscenes", tmp / "nus", "mini_val", grid, sweeps=10)
        t0 = time.perf_counter()
        s = convert(cfg, tmp / "nus.zarr")
        dt = time.perf_counter() - t0
        print(f"nuScenes convert: {s['frames']} frames x 10 sweeps in {dt:.2f} s -> {s['frames'] / dt:.1f} frames/s on one core")
        nusc = NuScenes("v1.0-mini", str(tmp / "nus"), verbose=False)
        store = VoxelStore.open(tmp / "nus.zarr")
        rng = np.random.default_rng(0)
        order = rng.permutation(np.repeat(np.arange(len(store)), 5))

        def raw(i: int) -> None:
            sample = nusc.get("sample", store.frame_ids[i])
            LidarPointCloud.from_file_multisweep(nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=10)
            nusc.get_sample_data(sample["data"]["LIDAR_TOP"])

        def timed(fn) -> float:  # noqa: ANN001
            ts = []
            for i in order:
                t = time.perf_counter()
                fn(int(i))
                ts.append(time.perf_counter() - t)
            return statistics.median(ts) * 1000

        def raw_same_content(i: int) -> None:
            """What the store hands out, built from the raw data: points and time lags (devkit
            multisweep), boxes, the keyframe's lidarseg labels, and the voxelization."""
            sample = nusc.get("sample", store.frame_ids[i])
            pc, _ = LidarPointCloud.from_file_multisweep(nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=10)
            nusc.get_sample_data(sample["data"]["LIDAR_TOP"])
            sd = sample["data"]["LIDAR_TOP"]
            np.fromfile(tmp / "nus" / nusc.get("lidarseg", sd)["filename"], dtype=np.uint8)
            grid.voxelize(pc.points[:3].T)

        t_raw = timed(raw)
        t_full = timed(raw_same_content)
        t_store = timed(lambda i: store[i])
        print(f"nuScenes random frame read (10 sweeps, ~{store.attrs['n_points'] // len(store):,} points), median:")
        print(f"  devkit points + boxes only        {t_raw:6.1f} ms   store x{t_raw / t_store:.1f} faster")
        print(f"  devkit + labels + voxelization    {t_full:6.1f} ms   store x{t_full / t_store:.1f} faster (target >= 3)")
        print(f"  store (all of that, precomputed)  {t_store:6.1f} ms")
        used: set[str] = set()
        for fid in store.frame_ids:  # the sweep files the converted frames are built from
            sd = nusc.get("sample_data", nusc.get("sample", fid)["data"]["LIDAR_TOP"])
            for _ in range(10):
                used.add(sd["filename"])
                if not sd["prev"]:
                    break
                sd = nusc.get("sample_data", sd["prev"])
        raw_bytes = sum((tmp / "nus" / f).stat().st_size for f in used)
        raw_bytes += sum((tmp / "nus" / nusc.get("lidarseg", nusc.get("sample", f)["data"]["LIDAR_TOP"])["filename"]).stat().st_size
                         for f in store.frame_ids)
        st_bytes = du(tmp / "nus.zarr")
        print(f"nuScenes bytes: raw sweep + lidarseg files these frames use {raw_bytes / 2**20:.1f} MiB (each sweep once); "
              f"store {st_bytes / 2**20:.1f} MiB with every frame's 10 sweeps accumulated, voxelized and compressed "
              f"-> {st_bytes / raw_bytes:.2f}x")

        generate_waymo(SynthConfig(scenes=1, frames=8, seed=0), tmp / "waymo")
        cfg = ConvertConfig("waymo", tmp / "waymo", "training", VoxelGrid((-74.88, -74.88, -2, 74.88, 74.88, 4), (0.64, 0.64, 0.375)))
        t0 = time.perf_counter()
        s = convert(cfg, tmp / "waymo.zarr")
        dt = time.perf_counter() - t0
        print(f"Waymo convert: {s['frames']} frames in {dt:.2f} s -> {s['frames'] / dt:.1f} frames/s on one core")
        w = VoxelStore.open(tmp / "waymo.zarr")
        t_w = statistics.median([_t(lambda: w[int(i)]) for i in rng.integers(0, len(w), 20)]) * 1000
        print(f"Waymo random frame read: {t_w:.1f} ms; bytes: raw {du(tmp / 'waymo') / 2**20:.1f} MiB, store "
              f"{du(tmp / 'waymo.zarr') / 2**20:.1f} MiB -> {du(tmp / 'waymo.zarr') / du(tmp / 'waymo'):.2f}x")


def _t(fn) -> float:  # noqa: ANN001
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
