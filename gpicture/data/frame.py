"""One frame as a dataset reader produces it, before it goes into a voxel store.

Frames and units: points, boxes and velocities are in the *points' frame*: the
keyframe LiDAR frame for nuScenes, the vehicle frame for Waymo; metres, radians,
metres per second. ``pose`` maps that frame into the dataset's global frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RawFrame:
    """A frame read from a raw dataset (a nuScenes keyframe with its sweeps, a Waymo frame)."""

    frame_id: str  # nuScenes: the keyframe's sample token; Waymo: "<context name>/<timestamp_us>"
    scene: str  # nuScenes scene name / Waymo context name
    timestamp_us: int
    pose: np.ndarray  # (4, 4) float64 global_from_points
    points: np.ndarray  # (N, 3) float32 x, y, z
    features: dict[str, np.ndarray]  # name -> (N,) float32: 'intensity', 'time_lag', 'ring' / 'elongation', 'return_index', 'nlz', 'laser'
    seg_labels: np.ndarray | None  # (N,) uint8 raw dataset classes, 255 = unlabelled; None: no labels in this frame
    boxes: np.ndarray  # (M, 7) float32 x, y, z, l, w, h, yaw
    box_names: np.ndarray  # (M,) str raw category names ('vehicle.car', 'TYPE_VEHICLE', ...)
    box_velocity: np.ndarray  # (M, 2) float32 vx, vy (NaN where the source has none)
    box_num_points: np.ndarray  # (M,) int32 lidar points in the box, as the source states
    box_ids: np.ndarray  # (M,) str instance / track id, stable over a scene
    box_difficulty: np.ndarray  # (M,) int8 Waymo detection difficulty (1, 2); 0 where not given
    occupancy: np.ndarray | None = None  # (K, 4) int16 rows z, y, x, label (OpenOccupancy); None: absent
    extra: dict[str, object] = field(default_factory=dict)

    def validate(self, source: str) -> None:
        """Raise ValueError naming `source` if the frame is malformed."""
        n = len(self.points)
        if self.points.ndim != 2 or self.points.shape[1] != 3:
            raise ValueError(f"{source}: points have shape {self.points.shape}, expected (N, 3)")
        for name, arr in self.features.items():
            if len(arr) != n:
                raise ValueError(f"{source}: feature {name!r} has {len(arr)} values for {n} points")
        if self.seg_labels is not None and len(self.seg_labels) != n:
            raise ValueError(f"{source}: {len(self.seg_labels)} labels for {n} points")
        m = len(self.boxes)
        for name in ("box_names", "box_velocity", "box_num_points", "box_ids", "box_difficulty"):
            if len(getattr(self, name)) != m:
                raise ValueError(f"{source}: {name} has {len(getattr(self, name))} rows for {m} boxes")
