"""Teacher speed and cache size.

Run: .venv/bin/python benchmarks/bench_teacher.py [STORE]   (default: data/zarr/nuscenes/val.zarr after `make repro`)
Prints teacher voxels/s on the CPU (Res16UNet34C forward, all cores), end-to-end cache
frames/s in params.yaml's input convention (Seal's cylindrical 0.1 m / 1 degree voxels) as a
ratio against the previous commit's (Cartesian 0.2 m), cache bytes per canonical voxel for
float16 and int8, and the int8 cosine fidelity against float32.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

from gpicture.data.store import VoxelStore
from gpicture.teacher import SealTeacher
from gpicture.teacher.cache import TeacherConfig, TeacherStore, build_teacher_store, frame_batch_features


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "data/zarr/nuscenes/val.zarr")
    store = VoxelStore.open(source)
    teacher = SealTeacher.from_checkpoint(None)
    dataset = store.attrs["dataset"]
    scale = 1 / 255 if dataset == "nuscenes" else 1.0
    seal = TeacherConfig.from_params(yaml.safe_load(open("params.yaml"))["teacher"], dataset)
    print(f"source {source}: {len(store)} frames, {store.n_voxels:,} canonical voxels; torch threads {torch.get_num_threads()}")
    fr = store[0]
    keep = fr.features.get("time_lag", np.zeros(len(fr.points))) == 0
    q = np.unique(np.floor(fr.points[keep & (fr.point_voxel >= 0)] / 0.2).astype(np.int32), axis=0)
    coords = np.column_stack([np.zeros(len(q), np.int32), q])
    feats = np.random.default_rng(0).random((len(q), 1)).astype(np.float32)
    teacher.encode(coords, feats)
    t0 = time.perf_counter()
    for _ in range(3):
        teacher.encode(coords, feats)
    dt = (time.perf_counter() - t0) / 3
    print(f"Res16UNet34C forward: {len(q):,} teacher voxels in {dt * 1000:.0f} ms -> {len(q) / dt:,.0f} voxels/s")
    with tempfile.TemporaryDirectory() as tmp:
        rates = {}
        for name, cfg in (("previous: cartesian 0.2 m", TeacherConfig(input_scale=scale)), ("params (Seal)", seal)):
            t0 = time.perf_counter()
            build_teacher_store(source, Path(tmp) / "conv.zarr", teacher, cfg, force=True)
            rates[name] = len(store) / (time.perf_counter() - t0)
            print(f"cache, {name} ({cfg.coordinates} {cfg.voxel_size} m): {rates[name]:.2f} frames/s")
        print(f"Seal's convention: x{rates['params (Seal)'] / rates['previous: cartesian 0.2 m']:.2f} the frames/s "
              "of the previous one")
        sizes = {}
        for dtype in ("float16", "int8"):
            cfg = replace(seal, dtype=dtype)
            t0 = time.perf_counter()
            build_teacher_store(source, Path(tmp) / f"{dtype}.zarr", teacher, cfg)
            dt = time.perf_counter() - t0
            sizes[dtype] = du(Path(tmp) / f"{dtype}.zarr")
            print(f"cache {dtype}: {len(store) / dt:.2f} frames/s end to end; {sizes[dtype] / store.n_voxels:.1f} bytes "
                  f"per canonical voxel on disk ({sizes[dtype] / 2**20:.1f} MiB)")
        f16 = TeacherStore.open(Path(tmp) / "float16.zarr")
        i8 = TeacherStore.open(Path(tmp) / "int8.zarr")
        ref, valid = frame_batch_features(teacher, [store[0]], seal)[0]
        for name, ts in (("float16", f16), ("int8", i8)):
            x = ts.frame(0)[0][valid]
            r = ref[valid]
            cos = (x * r).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(r, axis=1)
            print(f"{name} cosine to float32: mean {cos.mean():.6f}, min {cos.min():.6f}")


if __name__ == "__main__":
    main()
