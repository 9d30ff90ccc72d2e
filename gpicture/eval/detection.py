"""Detection predictions of a split in the dataset's official format, and their scores.

nuScenes predictions are the official submission JSON scored by the devkit's
``DetectionEval`` against the raw tables; Waymo predictions are a ``metrics_pb2.Objects``
file scored by :func:`gpicture.eval.waymo_detection.evaluate` against the store's boxes.
The same scoring reads an external predictions file (``gpicture evaluate --predictions``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gpicture.data.spec import DatasetSpec, DetectionFormat
from gpicture.data.store import VoxelStore
from gpicture.eval.nuscenes_detection import evaluate_submission
from gpicture.eval.nuscenes_submission import (
    lidar_boxes_to_submission,
    write_submission,
)
from gpicture.eval.predictions import DetectionPrediction, RawSource, finite
from gpicture.eval.waymo_detection import evaluate
from gpicture.eval.waymo_objects import read_objects, store_ground_truth, write_objects


def predictions_file(spec: DatasetSpec, report_dir: Path) -> Path:
    """Where the predictions of a split are written in ``report_dir``."""
    match spec.detection_format:
        case DetectionFormat.NUSCENES_SUBMISSION:
            return Path(report_dir) / "results_nusc.json"
        case DetectionFormat.WAYMO_OBJECTS:
            return Path(report_dir) / "objects.bin"


def write_detections(spec: DatasetSpec, preds: Iterable[DetectionPrediction], store: VoxelStore, out: Path) -> int:
    """Write the predictions of the frames of ``store`` to ``out`` in the dataset's format
    (nuScenes boxes go to global coordinates with each frame's pose). Returns the number of
    boxes written."""
    match spec.detection_format:
        case DetectionFormat.NUSCENES_SUBMISSION:
            sub = lidar_boxes_to_submission(preds, store.pose, meta={"use_lidar": True})
            write_submission(sub, out)
            return sum(len(v) for v in sub["results"].values())
        case DetectionFormat.WAYMO_OBJECTS:
            return write_objects(preds, out)


def score_detections(spec: DatasetSpec, predictions: Path, store: Path, work_dir: Path,
                     source: RawSource | None = None) -> dict[str, Any]:
    """Metrics of a predictions file on the split of ``store`` (NaN written as null).

    nuScenes: ``{mAP, NDS, per_class_AP, tp_errors, scenes, scenes_missing}`` from
    ``DetectionEval`` on the raw dataset ``source`` (its own summary files go to ``work_dir``;
    ``scenes``: the split's scenes present, the ones evaluated); Waymo: ``{mAP_L1, mAPH_L1,
    mAP_L2, mAPH_L2}`` and per-class AP/APH at both levels, against the store's boxes.
    """
    predictions = Path(predictions)
    if not predictions.is_file():
        raise ValueError(f"{predictions}: no such predictions file")
    match spec.detection_format:
        case DetectionFormat.NUSCENES_SUBMISSION:
            if source is None:
                raise ValueError("nuScenes scoring needs the raw dataset (root, version, eval set)")
            m = evaluate_submission(source.root, source.version, source.eval_set, predictions, work_dir)
            return finite({k: m[k] for k in ("mAP", "NDS", "per_class_AP", "tp_errors", "scenes", "scenes_missing")})
        case DetectionFormat.WAYMO_OBJECTS:
            gt = store_ground_truth(VoxelStore.open(store))
            return finite(evaluate(gt, read_objects(predictions, frame_ids=list(gt))))
