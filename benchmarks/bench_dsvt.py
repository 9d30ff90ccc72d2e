"""DSVT student speed.

Run: .venv/bin/python benchmarks/bench_dsvt.py
- small CPU profile: forward + backward per frame (a synthetic nuScenes frame, 10 sweeps);
- the paper's full nuScenes profile: forward on a realistic frame (~30k voxels at 0.2 m),
  on the CPU and, when CUDA is available, on the GPU with peak memory.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from gpicture.data.convert import ConvertConfig, convert
from gpicture.data.batch import collate_frames
from gpicture.data.store import VoxelStore
from gpicture.data.voxelize import VoxelGrid
from gpicture.models.student import Student, StudentConfig
from gpicture.synth.generate import SynthConfig, generate_nuscenes

REPO = Path(__file__).resolve().parent.parent


def frame(tmp: Path):  # noqa: ANN201
    generate_nuscenes(SynthConfig(scenes=1, frames=2, sweeps_before=9, seed=0, occupancy=False), tmp / "raw")
    grid = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.4, 0.4, 0.4))
    convert(ConvertConfig("nuscenes", tmp / "raw", "mini_train", grid, sweeps=10), tmp / "s.zarr")
    return VoxelStore.open(tmp / "s.zarr")


def timed(fn, repeat: int = 3) -> float:  # noqa: ANN001
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        store = frame(Path(tmp))
        fr = store[1]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    small = params["model"]["profiles"]["small"]["nuscenes"]
    cfg = StudentConfig.from_params(small, store.attrs)
    model = Student(cfg)
    b = collate_frames([fr], list(cfg.point_features))

    def step() -> None:
        out = model(b.points, b.features, b.point_voxel, b.voxel_coords)
        loss = model.bev(out, 1).mean() + sum(a.mean() for a in out.activations)
        loss.backward()

    t = timed(step)
    print(f"small profile: {len(b.points):,} points, {len(b.voxel_coords):,} voxels -> forward+backward {t * 1000:.0f} ms/frame (CPU)")

    full = params["model"]["profiles"]["full"]["nuscenes"]
    grid = VoxelGrid(tuple(full["point_cloud_range"]), tuple(full["voxel_size"]))
    key = fr.features["time_lag"] <= 0.25  # keyframe + 5 sweeps: about 30k voxels at 0.2 m, like a real frame
    pts = torch.from_numpy(fr.points[key])
    coords, pv = grid.voxelize(fr.points[key])
    nz, ny, nx = grid.shape_zyx
    attrs = {"voxel_size": full["voxel_size"], "point_cloud_range": full["point_cloud_range"], "grid_shape_zyx": [nz, ny, nx]}
    fcfg = StudentConfig.from_params(full, attrs)
    fmodel = Student(fcfg).eval()
    feats = torch.from_numpy(fr.features["intensity"][key][:, None].repeat(2, 1))
    c = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), torch.from_numpy(coords)], 1)
    pv_t = torch.from_numpy(pv).long()
    with torch.no_grad():
        t = timed(lambda: fmodel(pts, feats, pv_t, c), repeat=2)
    print(f"full nuScenes profile (d_model 256, set 48, 512x512x40): {len(c):,} voxels -> forward {t * 1000:.0f} ms (CPU)")
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        g = fmodel.to(dev)
        args = (pts.to(dev), feats.to(dev), pv_t.to(dev), c.to(dev))
        torch.cuda.reset_peak_memory_stats()

        def fwd() -> None:
            with torch.no_grad():
                g(*args)
            torch.cuda.synchronize()

        t = timed(fwd, repeat=5)
        print(f"full nuScenes profile on {torch.cuda.get_device_name()}: forward {t * 1000:.1f} ms, "
              f"peak memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    else:
        print("no CUDA device here: GPU figures not measured")


if __name__ == "__main__":
    main()
