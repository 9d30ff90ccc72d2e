"""Figures that compare a nuScenes folder's LiDAR with another's: the synthetic world against real data.

:func:`intensity_by_class` reads every LIDAR_TOP keyframe with lidarseg labels of a dataset
(through the devkit's tables) and summarizes the intensity of its points per raw lidarseg
class and overall. ``benchmarks/synth_realism.py`` prints it for the synthetic default beside
the real keyframes of ``../shared/realdata`` (README, "Real data"), and a test holds the
synthetic world's per-class medians to the real ones (the reflectivities of
:mod:`gpicture.synth.taxonomy` are calibrated on them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PERCENTILES = (5, 25, 50, 75, 90, 95, 99)


@dataclass(frozen=True)
class IntensityStats:
    """Intensity (the .pcd.bin's 4th column, 0..255 for nuScenes) of a set of points."""

    points: int
    mean: float
    percentiles: dict[int, float]  # PERCENTILES -> value

    @property
    def median(self) -> float:
        return self.percentiles[50]

    @classmethod
    def of(cls, values: np.ndarray) -> IntensityStats:
        v = np.asarray(values, dtype=np.float64)
        return cls(len(v), float(v.mean()), dict(zip(PERCENTILES, np.percentile(v, PERCENTILES).tolist(),
                                                     strict=True)))


def intensity_by_class(nusc: Any) -> tuple[IntensityStats, dict[str, IntensityStats]]:
    """(all labelled keyframe points, per raw lidarseg class name) of a loaded ``NuScenes``."""
    root = Path(nusc.dataroot)
    names = {c["index"]: c["name"] for c in nusc.category}
    values, labels = [], []
    for rec in nusc.lidarseg:
        sd = nusc.get("sample_data", rec["sample_data_token"])
        values.append(np.fromfile(root / sd["filename"], dtype=np.float32).reshape(-1, 5)[:, 3])
        labels.append(np.fromfile(root / rec["filename"], dtype=np.uint8))
    if not values:
        raise ValueError(f"{root}: no lidarseg keyframe to summarize")
    v, lab = np.concatenate(values), np.concatenate(labels)
    return IntensityStats.of(v), {names[c]: IntensityStats.of(v[lab == c]) for c in np.unique(lab)}
