"""Stand-in teacher training speed (gpicture teacher-fit).

Run: .venv/bin/python benchmarks/bench_teacher_fit.py [STEPS]   (default 6 timed steps per setting)
Prints, on this machine's CPU (all cores): pool keyframes simulated per second against
the same scenes simulated with all their sweeps (what `gpicture synth` casts; the pool
casts keyframes only), and seconds per training step for the default of params.yaml against
the previous default (a 90 degree sector anywhere, 4096 points for the point term) and
SLidR's full frame (the original's choice).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import numpy as np
import torch
import yaml

from gpicture.synth.config import SynthConfig
from gpicture.synth.generate import scene_seed
from gpicture.synth.simulate import simulate_nuscenes_scene
from gpicture.teacher.cache import TeacherConfig
from gpicture.teacher.res16unet import Res16UNet34C
from gpicture.training.teacher_fit import FitConfig, fit_standin
from gpicture.training.teacher_pool import POOL_TAG, PoolConfig, simulate_pool


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    sec = yaml.safe_load(open("params.yaml"))["teacher"]
    tcfg = TeacherConfig.from_params(sec, "nuscenes")
    std = {k: v for k, v in sec["standin"].items() if k != "pool"}
    base = FitConfig(**{**std, "steps": steps + 1})
    print(f"torch threads {torch.get_num_threads()}; teacher input {tcfg.convention()}")

    cfg = SynthConfig(scenes=1, frames=4, sweeps_before=0, occupancy=False, val_fraction=0.0)
    frames = simulate_pool(PoolConfig(scenes=1, frames=4))  # also warms the imports
    rate = {}
    for only in (False, True):
        t0 = time.perf_counter()
        simulate_nuscenes_scene("bench", scene_seed(0, POOL_TAG, 0), cfg, 0, keyframes_only=only)
        rate[only] = cfg.frames / (time.perf_counter() - t0)
    print(f"pool: {rate[True]:.1f} keyframes/s casting keyframes only vs {rate[False]:.1f} casting every sweep "
          f"(gpicture synth): x{rate[True] / rate[False]:.1f}")

    results = {}
    settings = (("default crop", base),
                ("previous default", replace(base, crop_deg=90.0, crop_centre="random", point_samples=4096,
                                             point_weight=1.0, point_sampling="uniform")),
                ("full frame (SLidR)", replace(base, crop_deg=360.0)))
    for name, fit in settings:
        torch.manual_seed(0)
        net = Res16UNet34C(1, 64, bn_momentum=0.05)
        times: list[float] = []
        last = [time.perf_counter()]

        def tick(step: int, n: int, loss: float) -> None:
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

        fit_standin(net, frames, 16, tcfg, fit, progress=tick)
        results[name] = float(np.median(times[1:]))  # the first step builds MinkowskiEngine's kernel maps cold
        print(f"{name:>20} ({fit.crop_deg:.0f} deg): {results[name]:.2f} s/step")
    a, b = results["default crop"], results["full frame (SLidR)"]
    print(f"default crop step: x{results['previous default'] / a:.2f} faster than the previous default's, "
          f"x{b / a:.2f} faster than a full frame (x{(b / a) * (base.crop_deg / 360):.2f} the points per second)")


if __name__ == "__main__":
    main()
