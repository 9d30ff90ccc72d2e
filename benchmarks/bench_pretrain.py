"""Pre-training speed on the small profile.

Run after `make repro` (uses data/zarr/nuscenes/train.zarr and its teacher store):
.venv/bin/python benchmarks/bench_pretrain.py
Prints steps/s (batch of 2 ten-sweep frames: masking, encoder on the visible voxels,
the decoder over 8 layer copies, losses, backward, AdamW) on the CPU, and on a GPU
when one is available.
"""

from __future__ import annotations

import functools
import statistics
import time
from pathlib import Path

import torch
import yaml

from gpicture.training.pretrain import MaskConfig, build_pretrainer, masks_for_batch
from gpicture.training.pretrain_data import PretrainDataset, collate_pretrain

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    prof = params["model"]["profiles"]["small"]["nuscenes"]
    ds = PretrainDataset(REPO / "data/zarr/nuscenes/train.zarr", REPO / "data/teacher/nuscenes/train.zarr")
    collate = functools.partial(collate_pretrain, feature_names=prof["point_features"],
                                voxel_size=tuple(ds.attrs["voxel_size"]), point_cloud_range=tuple(ds.attrs["point_cloud_range"]))
    batch = collate([ds[0], ds[1]])
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        torch.manual_seed(0)
        model = build_pretrainer(prof, ds.attrs, tuple(params["pretrain"]["alpha"])).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        b = batch.to(dev)
        t_mask = []

        def step() -> None:
            t = time.perf_counter()
            mask = masks_for_batch(b, MaskConfig(), 0, 0)
            t_mask.append(time.perf_counter() - t)
            loss = model(b, mask, beta=1.0).total
            opt.zero_grad()
            loss.backward()
            opt.step()
            if dev == "cuda":
                torch.cuda.synchronize()

        step()
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            step()
            ts.append(time.perf_counter() - t)
        med = statistics.median(ts)
        print(f"{dev}: {len(b.voxels.voxel_coords):,} voxels, {len(b.voxels.points):,} points per batch of 2 -> "
              f"{1 / med:.2f} steps/s ({med * 1000:.0f} ms/step, I2Mask {statistics.median(t_mask) * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
