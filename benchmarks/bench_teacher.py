"""Teacher speed and cache size.

Run: .venv/bin/python benchmarks/bench_teacher.py [STORE] [--determinism-only]   (default: data/zarr/nuscenes/val.zarr after `make repro`)
Prints teacher voxels/s on the CPU (Res16UNet34C forward, all cores), end-to-end cache
frames/s in params.yaml's input convention (Seal's cylindrical 0.1 m / 1 degree voxels) as a
ratio against the previous commit's (Cartesian 0.2 m), cache bytes per canonical voxel for
float16 and int8, the int8 cosine fidelity against float32, and the determinism of the
features: the values two passes over the store differ in and the frames/s, with the kernel maps
built on one OpenMP thread (``deterministic_coordinates``, issue 30) against MinkowskiEngine's
default threads (before), alternated in one run so that the ratio shares the machine's load.
The difference shows on OpenBLAS' Haswell / Zen kernels (run with ``OPENBLAS_CORETYPE=Haswell``
on an AVX-512 machine to see it).
"""

from __future__ import annotations

import sys
import tempfile
import time
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

from gpicture.data.store import VoxelStore
from gpicture.teacher import SealTeacher
from gpicture.teacher.cache import (
    TeacherConfig,
    TeacherStore,
    build_teacher_store,
    frame_batch_features,
)
from gpicture.teacher.res16unet import ME


def _encode_default_threads(self, coords, feats) -> np.ndarray:
    """SealTeacher.encode before issue 30: MinkowskiEngine's own coordinate manager, whose OpenMP
    threads build the kernel maps (pairs in a run-dependent order)."""
    c = torch.as_tensor(np.asarray(coords), dtype=torch.int32)
    x = ME.SparseTensor(torch.as_tensor(np.asarray(feats), dtype=torch.float32), coordinates=c,
                        quantization_mode=ME.SparseTensorQuantizationMode.UNWEIGHTED_AVERAGE)
    with torch.no_grad():
        return self.net(x).features_at_coordinates(c.float()).numpy().astype(np.float32)


def determinism(store: VoxelStore, teacher: SealTeacher, cfg: TeacherConfig, rounds: int = 2) -> None:
    """Differing float16 cache values between passes, and frames/s, per kernel-map threading."""
    batches = [[store.frame(i, labels=False) for i in range(b, min(b + cfg.batch_frames, len(store)))]
               for b in range(0, len(store), cfg.batch_frames)]
    variants = {"one thread (now)": teacher, "default threads (before)": types.SimpleNamespace(
        net=teacher.net, description=teacher.description, encode=types.MethodType(_encode_default_threads, teacher))}
    seconds = dict.fromkeys(variants, 0.0)
    outputs: dict[str, list[np.ndarray]] = {k: [] for k in variants}
    for r in range(rounds):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):  # alternate who goes first
            t0 = time.perf_counter()
            feats = [f for frames in batches for f, _ in frame_batch_features(variants[name], frames, cfg)]
            seconds[name] += time.perf_counter() - t0
            outputs[name].append(np.concatenate(feats).astype(np.float16))
    for name in variants:
        first, *rest = outputs[name]
        diff = max(int((first != o).sum()) for o in rest)
        print(f"kernel maps on {name}: {len(store) * rounds / seconds[name]:.2f} frames/s; passes differ in "
              f"{diff} of {first.size:,} float16 values")
    now, before = (len(store) * rounds / seconds[k] for k in variants)
    print(f"deterministic teacher: x{now / before:.2f} the frames/s of the default threads "
          f"(torch threads {torch.get_num_threads()})")


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    source = Path(args[0] if args else "data/zarr/nuscenes/val.zarr")
    store = VoxelStore.open(source)
    teacher = SealTeacher.from_checkpoint(None)
    dataset = store.attrs["dataset"]
    scale = 1 / 255 if dataset == "nuscenes" else 1.0
    seal = TeacherConfig.from_params(yaml.safe_load(Path("params.yaml").read_text())["teacher"], dataset)
    print(f"source {source}: {len(store)} frames, {store.n_voxels:,} canonical voxels; torch threads {torch.get_num_threads()}")
    determinism(store, teacher, seal)
    if "--determinism-only" in sys.argv:
        return
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
