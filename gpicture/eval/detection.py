"""Detection evaluation of a split: predictions in the dataset's own format, then its metric.

nuScenes predictions are the official submission JSON scored by the devkit's
``DetectionEval`` against the raw tables; Waymo predictions are a ``metrics_pb2.Objects``
file scored by :func:`gpicture.eval.waymo_detection.evaluate` against the store's boxes.
The same scoring reads an external predictions file (``gpicture evaluate --predictions``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpicture.data.store import VoxelStore


@dataclass(frozen=True)
class NuScenesSource:
    """Where the devkit finds the ground truth of a nuScenes split."""

    root: Path
    version: str
    eval_set: str  # the devkit's split name, e.g. mini_val


def write_predictions(dataset: str, detector: Path, store: Path, out: Path, score_threshold: float = 0.05,
                      batch_size: int = 2) -> int:
    """Run the fine-tuned ``detector`` over every frame of ``store`` and write its predictions
    to ``out`` in the dataset's format. Returns the number of boxes written."""
    from gpicture.training.finetune_detection import load_detector, predict

    det = load_detector(detector, VoxelStore.open(store).attrs)
    frames = predict(det, store, batch_size=batch_size, score_threshold=score_threshold)
    if dataset == "nuscenes":
        from gpicture.eval.nuscenes_detection import lidar_boxes_to_submission, write_submission

        sub = lidar_boxes_to_submission(frames, meta={"use_lidar": True})
        write_submission(sub, out)
        return sum(len(v) for v in sub["results"].values())
    from gpicture.eval.waymo_predictions import write_objects

    return write_objects(frames, out)


def _finite(obj: Any) -> Any:
    """NaN/inf -> None, recursively (DVC metrics files are strict JSON)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def score_predictions(dataset: str, predictions: Path, store: Path, work_dir: Path,
                      nuscenes: NuScenesSource | None = None) -> dict[str, Any]:
    """Metrics of a predictions file on the split of ``store`` (NaN written as null).

    nuScenes: ``{mAP, NDS, per_class_AP, tp_errors}`` from ``DetectionEval`` (its own
    summary files go to ``work_dir``); Waymo: ``{mAP_L1, mAPH_L1, mAP_L2, mAPH_L2}`` and
    per-class AP/APH at both levels.
    """
    predictions = Path(predictions)
    if not predictions.is_file():
        raise ValueError(f"{predictions}: no such predictions file")
    if dataset == "nuscenes":
        from gpicture.eval.nuscenes_detection import evaluate_submission

        if nuscenes is None:
            raise ValueError("nuScenes scoring needs the raw dataset (root, version, eval set)")
        m = evaluate_submission(nuscenes.root, nuscenes.version, nuscenes.eval_set, predictions, work_dir)
        return _finite({k: m[k] for k in ("mAP", "NDS", "per_class_AP", "tp_errors")})
    from gpicture.eval.waymo_detection import evaluate
    from gpicture.eval.waymo_predictions import read_objects, store_ground_truth

    gt = store_ground_truth(VoxelStore.open(store))
    pred = read_objects(predictions, frame_ids=list(gt))
    return _finite(evaluate(gt, pred))
