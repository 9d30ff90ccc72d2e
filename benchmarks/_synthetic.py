"""A tiny synthetic store on the params.yaml grid, for benchmarks run without `make repro` data."""

from __future__ import annotations

from pathlib import Path

from gpicture.data.convert import ConvertConfig, convert
from gpicture.data.voxelize import VoxelGrid


def synthetic_store(dataset: str, params: dict, tmp: Path, occupancy: bool = False, frames: int = 4) -> Path:
    """``frames`` frames of one synthetic nuScenes scene (with occupancy files when asked) or
    Waymo segment (segmentation labels on every frame), converted with params' grid."""
    from gpicture.synth.generate import SynthConfig, generate_nuscenes, generate_waymo

    conv = params["convert"][dataset]
    grid = VoxelGrid(tuple(conv["point_cloud_range"]), tuple(conv["voxel_size"]))
    if dataset == "nuscenes":
        generate_nuscenes(SynthConfig(scenes=1, frames=frames, sweeps_before=max(conv["sweeps"] - 1, 0), seed=0,
                                      occupancy=occupancy), tmp / "raw")
        cfg = ConvertConfig("nuscenes", tmp / "raw", "mini_train", grid, sweeps=conv["sweeps"])
    else:
        generate_waymo(SynthConfig(scenes=1, frames=frames, seed=0, waymo_label_every=1), tmp / "raw")
        cfg = ConvertConfig("waymo", tmp / "raw", "training", grid)
    convert(cfg, tmp / "train.zarr")
    return tmp / "train.zarr"
