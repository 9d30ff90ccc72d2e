"""What ``gpicture synth`` generates: its settings, checked once."""

from __future__ import annotations

from dataclasses import dataclass

NUSCENES_VERSIONS = ("v1.0-mini", "v1.0-trainval")


class SynthError(ValueError):
    """Bad arguments to the synthetic data generator (one clear message)."""


@dataclass(frozen=True)
class SynthConfig:
    """What to generate (built once from the ``synth`` section of params.yaml)."""

    scenes: int  # scenes (nuScenes) or segments (Waymo)
    frames: int  # keyframes per scene (nuScenes, 2 Hz) or frames per segment (Waymo, 10 Hz)
    seed: int = 0
    val_fraction: float = 0.25
    density: float = 1.0  # agents per metre of road, relative to a busy city street
    sweeps_before: int = 10  # nuScenes: sweeps recorded before the first keyframe
    occupancy: bool = True  # nuScenes: write nuScenes-Occupancy files
    waymo_label_every: int = 5  # Waymo: segmentation labels on every n-th frame (2 Hz)
    zlib_level: int = 1  # Waymo range-image compression (1 is fast; the format allows any)
    workers: int = 1
    version: str = "v1.0-mini"  # nuScenes: v1.0-mini (<= 10 scenes, the official mini split) or v1.0-trainval

    def validate(self) -> None:
        for name in ("scenes", "frames", "workers", "waymo_label_every"):
            if getattr(self, name) < 1:
                raise SynthError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        if self.sweeps_before < 0:
            raise SynthError(f"--sweeps-before must be >= 0, got {self.sweeps_before}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise SynthError(f"val fraction must be in [0, 1), got {self.val_fraction}")
        if self.density <= 0:
            raise SynthError(f"density must be > 0, got {self.density}")
        if self.version not in NUSCENES_VERSIONS:
            raise SynthError(f"version must be one of {', '.join(NUSCENES_VERSIONS)}, got {self.version!r}")
