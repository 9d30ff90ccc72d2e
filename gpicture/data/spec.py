"""What the pipeline knows about each dataset, in one place.

A :class:`DatasetSpec` holds a dataset's class taxonomies (the raw classes its store
records, its detection classes and CenterPoint class groups, the segmentation and occupancy
training/evaluation classes and their mappings), its label values (unlabelled, ignore) and
where its labels come from. Outside ``gpicture.data`` (this module and the two readers)
code never compares a dataset's name: it asks the spec, and where formats differ it
``match``-es on one of the small enums below.

The label values, one name each:

- :data:`UNLABELLED` (255): a point of the store without a segmentation label.
- :data:`IGNORE_INDEX` (-100): a training target that takes no part in the loss
  (``F.cross_entropy``'s default).
- :data:`OCCUPANCY_IGNORE` (255): an occupancy voxel known to be occupied by something
  unlabelled; skipped by the loss and the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from types import SimpleNamespace
from typing import Any

import numpy as np

from gpicture.data.taxonomy import (
    NUSCENES_CATEGORIES,
    WAYMO_BOX_TYPES,
    WAYMO_SEG_CLASSES,
)

UNLABELLED = 255
IGNORE_INDEX = -100
OCCUPANCY_IGNORE = 255


class DetectionFormat(Enum):
    """The official format of a dataset's detection predictions."""

    NUSCENES_SUBMISSION = "nuscenes-submission-json"  # scored by the devkit's DetectionEval
    WAYMO_OBJECTS = "waymo-metrics-pb2-objects"  # scored by our Waymo AP/APH


class SegmentationFormat(Enum):
    """The layout of a dataset's segmentation predictions."""

    NUSCENES_LIDARSEG = "nuscenes-lidarseg"  # lidarseg/<eval_set>/<token>_lidarseg.bin, scored by LidarSegEval
    WAYMO_BINS = "waymo-bins"  # <context>/<timestamp>.bin per store frame, our mIoU


class OccupancyTruth(Enum):
    """Where a dataset's semantic-occupancy ground truth comes from."""

    OCCUPANCY_ROWS = "occupancy rows"  # nuScenes-Occupancy files, stored on the 0.2 m OpenOccupancy grid
    POINT_LABELS = "segmentation labels"  # built from the labelled points


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset's taxonomies, label sources and formats (see the module docstring)."""

    name: str
    raw_classes: tuple[str, ...]  # the store's `classes`: per-point label index -> name
    point_features: tuple[str, ...]  # the per-point features its reader writes
    box_types: tuple[str, ...]  # raw box categories the reader can write (nuScenes: the lidarseg categories)
    detection_groups: tuple[tuple[str, ...], ...]  # CenterPoint class groups (one heatmap head each)
    detection_format: DetectionFormat
    segmentation_format: SegmentationFormat
    occupancy_truth: OccupancyTruth
    keyframe_points_only: bool  # segment only the keyframe points (time_lag 0), the sweeps feed the encoder
    occupancy_files_by_lidar_token: bool  # occupancy files are named by the LIDAR_TOP token (else the frame id)
    has_range_images: bool  # its raw LiDAR comes as range images (the range view)

    @property
    def detection_classes(self) -> list[str]:
        """The detection classes, flat, in class-group order (the detector's label index)."""
        return [n for group in self.detection_groups for n in group]

    def detection_class_map(self) -> dict[str, str]:
        """Raw box category -> detection class, for the categories that have one."""
        match self.detection_format:
            case DetectionFormat.NUSCENES_SUBMISSION:
                from nuscenes.eval.detection.utils import category_to_detection_name

                return {c: d for c in self.box_types if (d := category_to_detection_name(c)) is not None}
            case DetectionFormat.WAYMO_OBJECTS:
                return {c: c for c in self.detection_classes}

    def segmentation_classes(self, store_classes: list[str]) -> tuple[list[str], np.ndarray]:
        """(names of the training classes, lookup (256,) int64 stored label -> training class
        index or :data:`IGNORE_INDEX`). The evaluation class of training index i is i + 1."""
        raw = list(store_classes)
        lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
        if self.name == "nuscenes":
            mapper = nuscenes_class_mapper(raw)
            coarse = mapper.coarse_name_2_coarse_idx_mapping
            ignore = mapper.ignore_class["index"]
            names = [n for n, i in sorted(coarse.items(), key=lambda kv: kv[1]) if i != ignore]
            for fine, c in mapper.fine_idx_2_coarse_idx_mapping.items():
                if c != ignore:
                    lut[fine] = c - 1
            return names, lut
        if raw[0] != "UNDEFINED" or len(raw) > UNLABELLED:
            raise ValueError(f"Waymo store classes {raw[:3]}...: expected UNDEFINED first")
        lut[1:len(raw)] = np.arange(len(raw) - 1)
        return raw[1:], lut

    def segmentation_eval_classes(self, store_classes: list[str]) -> tuple[list[str], np.ndarray]:
        """(names of the evaluation classes, index 0 the ignore class; lookup (256,) int64
        stored label -> evaluation class, unlabelled -> 0)."""
        raw = list(store_classes)
        lut = np.zeros(256, dtype=np.int64)
        if self.name == "nuscenes":
            mapper = nuscenes_class_mapper(raw)
            names = [n for n, _ in sorted(mapper.coarse_name_2_coarse_idx_mapping.items(), key=lambda kv: kv[1])]
            for fine, coarse in mapper.fine_idx_2_coarse_idx_mapping.items():
                lut[fine] = coarse
            return names, lut
        lut[:len(raw)] = np.arange(len(raw))
        return raw, lut

    def segmented_count(self, frame: Any) -> int:
        """How many leading points of a store frame are segmented: with ``keyframe_points_only``
        the keyframe's (``time_lag == 0``, which the reader writes first), otherwise all."""
        if not self.keyframe_points_only:
            return len(frame.points)
        key = frame.features["time_lag"] == 0
        k = int(key.sum())
        if not key[:k].all():
            raise ValueError(f"{self.name} frame {frame.frame_id}: keyframe points (time_lag 0) are not the first points")
        return k

    def occupancy_classes(self, store_classes: list[str]) -> list[str]:
        """Names of occupancy labels 1..K: the segmentation evaluation classes (nuScenes' 16
        lidarseg classes, devkit names, whether the truth is nuScenes-Occupancy rows or the
        labelled points; the Waymo segmentation classes of the store, UNDEFINED excluded)."""
        return self.segmentation_eval_classes(store_classes)[0][1:]


def nuscenes_class_mapper(raw_classes: list[str]) -> Any:
    """The devkit's ``LidarsegClassMapper`` for a list of raw lidarseg classes in index order
    (it only reads ``lidarseg_name2idx_mapping`` from the NuScenes object)."""
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper

    return LidarsegClassMapper(SimpleNamespace(lidarseg_name2idx_mapping={n: i for i, n in enumerate(raw_classes)}))


NUSCENES = DatasetSpec(
    name="nuscenes",
    raw_classes=NUSCENES_CATEGORIES,
    point_features=("intensity", "ring", "time_lag"),
    box_types=NUSCENES_CATEGORIES,
    detection_groups=(("car",), ("truck", "construction_vehicle"), ("bus", "trailer"), ("barrier",),
                      ("motorcycle", "bicycle"), ("pedestrian", "traffic_cone")),
    detection_format=DetectionFormat.NUSCENES_SUBMISSION,
    segmentation_format=SegmentationFormat.NUSCENES_LIDARSEG,
    occupancy_truth=OccupancyTruth.OCCUPANCY_ROWS,
    keyframe_points_only=True,
    occupancy_files_by_lidar_token=True,
    has_range_images=False,
)
WAYMO = DatasetSpec(
    name="waymo",
    raw_classes=WAYMO_SEG_CLASSES,
    point_features=("intensity", "elongation", "return_index", "nlz", "laser"),
    box_types=WAYMO_BOX_TYPES,
    detection_groups=(("TYPE_VEHICLE", "TYPE_PEDESTRIAN", "TYPE_CYCLIST"),),
    detection_format=DetectionFormat.WAYMO_OBJECTS,
    segmentation_format=SegmentationFormat.WAYMO_BINS,
    occupancy_truth=OccupancyTruth.POINT_LABELS,
    keyframe_points_only=False,
    occupancy_files_by_lidar_token=False,
    has_range_images=True,
)
DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (NUSCENES, WAYMO)}


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of a dataset by name (ValueError naming the known ones)."""
    try:
        return DATASETS[str(name)]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r} ({' or '.join(DATASETS)})") from None
