"""Colours: the datasets' semantic palettes, the fixed colours of boxes, clusters and backgrounds.

- nuScenes: the devkit's own 16-class lidarseg palette (``LidarsegClassMapper.get_coarse2color``,
  ``ignore`` black). The store keeps the 32 raw lidarseg classes; they are mapped to the 16
  evaluation classes with the devkit's mapper, so a picture shows what the metric scores.
- Waymo: Waymo publishes no palette for its 23 segmentation classes; :data:`WAYMO_COLORS` gives
  each the colour of its nuScenes counterpart where there is one (car orange, pedestrian blue,
  road teal, vegetation green...), so pictures of both datasets read alike.

Class ids in a :class:`SemanticPalette` are the evaluation labels: 0 is ``ignore`` (nuScenes) or
``UNDEFINED`` (Waymo), then 1..C; occupancy rows use the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gpicture.data.spec import SegmentationFormat, dataset_spec, nuscenes_class_mapper

BACKGROUND = (1.0, 1.0, 1.0)  # BEV panels: white, for print
UNLABELLED_COLOR = (0.78, 0.78, 0.78)  # points / voxels without a label (255) or without a teacher target
GT_BOX = (0.0, 0.0, 0.0)  # ground-truth outlines and heading marks
PRED_BOX = (1.0, 0.0, 1.0)  # predicted outlines (magenta: no class colour is close)
MASKED = (0.35, 0.35, 0.35)  # masked voxels in the "what the student sees" panel
MISSED = (0.12, 0.35, 0.95)  # occupancy: true but not predicted
FALSE = (0.93, 0.15, 0.15)  # occupancy: predicted but not true
AGREE = (0.55, 0.55, 0.55)  # occupancy: predicted and true

# Qualitative colours for k-means clusters (Okabe-Ito, colour-blind safe, with brown instead of its
# black, the ground-truth box colour; cycled beyond 8).
CLUSTER_COLORS = np.array([
    (0.902, 0.624, 0.0), (0.337, 0.706, 0.914), (0.0, 0.620, 0.451), (0.941, 0.894, 0.259),
    (0.0, 0.447, 0.698), (0.835, 0.369, 0.0), (0.800, 0.475, 0.655), (0.45, 0.27, 0.07),
])

WAYMO_COLORS: dict[str, tuple[int, int, int]] = {
    "UNDEFINED": (0, 0, 0), "CAR": (255, 158, 0), "TRUCK": (255, 99, 71), "BUS": (255, 127, 80),
    "OTHER_VEHICLE": (233, 150, 70), "MOTORCYCLIST": (255, 61, 99), "BICYCLIST": (220, 20, 60),
    "PEDESTRIAN": (0, 0, 230), "SIGN": (255, 215, 0), "TRAFFIC_LIGHT": (255, 0, 0), "POLE": (112, 128, 144),
    "CONSTRUCTION_CONE": (47, 79, 79), "BICYCLE": (138, 43, 226), "MOTORCYCLE": (219, 112, 147),
    "BUILDING": (222, 184, 135), "VEGETATION": (0, 175, 0), "TREE_TRUNK": (139, 69, 19), "CURB": (105, 105, 105),
    "ROAD": (0, 207, 191), "LANE_MARKER": (100, 149, 237), "OTHER_GROUND": (175, 0, 75), "WALKABLE": (112, 180, 60),
    "SIDEWALK": (75, 0, 75),
}


@dataclass(frozen=True)
class SemanticPalette:
    """The classes of a dataset as a picture shows them."""

    names: tuple[str, ...]  # (C,) legend names, index = evaluation class id (0 = ignore / UNDEFINED)
    colors: np.ndarray  # (C, 3) float RGB in [0, 1]
    lut: np.ndarray  # (256,) int64: stored point label -> class id, -1 for "no label" (255)

    def point_colors(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stored point labels (N,) -> (class ids (N,) int64 with -1 = none, RGB (N, 3) float)."""
        ids = self.lut[np.asarray(labels, dtype=np.int64)]
        table = np.vstack([self.colors, np.asarray(UNLABELLED_COLOR)[None]])  # row -1: unlabelled
        return ids, table[ids]

    def class_colors(self, ids: np.ndarray) -> np.ndarray:
        """Class ids (N,) (-1 or out of range: none) -> RGB (N, 3) float."""
        ids = np.asarray(ids, dtype=np.int64)
        table = np.vstack([self.colors, np.asarray(UNLABELLED_COLOR)[None]])
        ok = (ids >= 0) & (ids < len(self.colors))
        return table[np.where(ok, ids, -1)]


def semantic_palette(dataset: str, store_attrs: dict[str, Any]) -> SemanticPalette:
    """The palette of a store's dataset (see the module docstring)."""
    raw = [str(c) for c in store_attrs["classes"]]
    lut = np.full(256, -1, dtype=np.int64)
    spec = dataset_spec(dataset)
    if spec.segmentation_format is SegmentationFormat.NUSCENES_LIDARSEG:  # the devkit's classes and colours
        mapper = nuscenes_class_mapper(raw)
        coarse = sorted(mapper.coarse_name_2_coarse_idx_mapping.items(), key=lambda kv: kv[1])
        names = tuple(n for n, _ in coarse)
        colors = np.array([mapper.coarse_colormap[n] for n in names], dtype=np.float64) / 255.0
        for fine, c in mapper.fine_idx_2_coarse_idx_mapping.items():
            lut[int(fine)] = int(c)
        return SemanticPalette(names, colors, lut)
    unknown = [c for c in raw if c not in WAYMO_COLORS]
    if unknown:
        raise ValueError(f"Waymo store classes {unknown} have no colour")
    lut[: len(raw)] = np.arange(len(raw))
    colors = np.array([WAYMO_COLORS[c] for c in raw], dtype=np.float64) / 255.0
    return SemanticPalette(tuple(raw), colors, lut)


def cluster_colors(ids: np.ndarray) -> np.ndarray:
    """Cluster ids (N,) -> RGB (N, 3); -1 (no teacher target) -> :data:`UNLABELLED_COLOR`."""
    ids = np.asarray(ids, dtype=np.int64)
    out = CLUSTER_COLORS[np.maximum(ids, 0) % len(CLUSTER_COLORS)]
    out[ids < 0] = UNLABELLED_COLOR
    return out
