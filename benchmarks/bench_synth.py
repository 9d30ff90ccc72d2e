"""Speed of the synthetic data generator on one CPU core.

Run: .venv/bin/python benchmarks/bench_synth.py
Targets (issue 3): >= 10 nuScenes sweeps/s and >= 2 Waymo frames/s (five lidars,
two returns), both including labels and writing the real formats.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from gpicture.synth.generate import SynthConfig, generate_nuscenes, generate_waymo  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SynthConfig(scenes=2, frames=6, seed=0, sweeps_before=10, workers=1)
        t0 = time.perf_counter()
        s = generate_nuscenes(cfg, Path(tmp) / "nuscenes")
        dt = time.perf_counter() - t0
        rate = s["sweeps"] / dt
        print(f"nuScenes: {s['sweeps']} sweeps ({s['keyframes']} keyframes with labels + occupancy) in {dt:.1f} s "
              f"-> {rate:.1f} sweeps/s on one core (target >= 10: x{rate / 10:.2f})")
        cfg = SynthConfig(scenes=1, frames=10, seed=0, workers=1, zlib_level=1)
        t0 = time.perf_counter()
        s = generate_waymo(cfg, Path(tmp) / "waymo")
        dt = time.perf_counter() - t0
        rate = s["frames"] / dt
        print(f"Waymo: {s['frames']} frames (5 lidars, 2 returns, written as tfrecord) in {dt:.1f} s "
              f"-> {rate:.2f} frames/s on one core (target >= 2: x{rate / 2:.2f})")


if __name__ == "__main__":
    main()
