"""The downstream tasks behind `gpicture finetune --task T` and `gpicture evaluate --task T`.

Each task names the three library calls its stages make: build its settings from its
``finetune.<task>`` params section, fine-tune, and (for evaluation) write predictions in
the dataset's own format and score a predictions file. Modules are imported on use, so
the CLI starts fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpicture.training.engine import DistInfo, TrainConfig


@dataclass(frozen=True)
class Predictions:
    path: Path  # the file (or folder) a metric reads
    count: int  # boxes / frames written
    unit: str


def _detection_finetune(dataset: str, model_params: dict[str, Any], store: Path, out: Path, cfg: TrainConfig,
                        dist: DistInfo, init: Path | None, label_fraction: float, sec: dict[str, Any],
                        resume: bool) -> dict[str, float]:
    from gpicture.training.finetune_detection import DetectionSettings, run_detection_finetune

    s = DetectionSettings.from_params(sec, dataset)
    return run_detection_finetune(dataset, model_params, store, out, cfg, dist, init=init, label_fraction=label_fraction,
                                  settings=s, resume=resume)


def _detection_predict(dataset: str, model: Path, store: Path, report_dir: Path, sec: dict[str, Any],
                       nuscenes: Any) -> Predictions:
    from gpicture.eval.detection import write_predictions

    path = Path(report_dir) / ("results_nusc.json" if dataset == "nuscenes" else "objects.bin")
    n = write_predictions(dataset, model, store, path, float(sec.get("score_threshold", 0.05)),
                          int(sec.get("batch_size", 2)))
    return Predictions(path, n, "boxes")


def _detection_score(dataset: str, predictions: Path, store: Path, report_dir: Path, nuscenes: Any) -> dict[str, Any]:
    from gpicture.eval.detection import score_predictions

    return score_predictions(dataset, predictions, store, report_dir, nuscenes)


def _segmentation_finetune(dataset: str, model_params: dict[str, Any], store: Path, out: Path, cfg: TrainConfig,
                           dist: DistInfo, init: Path | None, label_fraction: float, sec: dict[str, Any],
                           resume: bool) -> dict[str, float]:
    from gpicture.training.finetune_segmentation import SegmentationSettings, run_segmentation_finetune

    return run_segmentation_finetune(dataset, model_params, store, out, cfg, dist, init=init,
                                     label_fraction=label_fraction,
                                     settings=SegmentationSettings.from_params(sec, dataset), resume=resume)


def _segmentation_predict(dataset: str, model: Path, store: Path, report_dir: Path, sec: dict[str, Any],
                          nuscenes: Any) -> Predictions:
    from gpicture.eval.segmentation import PREDICTIONS, write_predictions

    n = write_predictions(dataset, model, store, report_dir, int(sec.get("batch_size", 2)), nuscenes=nuscenes)
    return Predictions(Path(report_dir) / PREDICTIONS, n, "frames")


def _segmentation_score(dataset: str, predictions: Path, store: Path, report_dir: Path, nuscenes: Any) -> dict[str, Any]:
    from gpicture.eval.segmentation import score_predictions

    return score_predictions(dataset, predictions, store, report_dir, nuscenes)


def _occupancy_finetune(dataset: str, model_params: dict[str, Any], store: Path, out: Path, cfg: TrainConfig,
                        dist: DistInfo, init: Path | None, label_fraction: float, sec: dict[str, Any],
                        resume: bool) -> dict[str, float]:
    from gpicture.training.finetune_occupancy import OccupancySettings, run_occupancy_finetune

    return run_occupancy_finetune(dataset, model_params, store, out, cfg, dist, init=init, label_fraction=label_fraction,
                                  settings=OccupancySettings.from_params(sec, dataset), resume=resume)


def _occupancy_predict(dataset: str, model: Path, store: Path, report_dir: Path, sec: dict[str, Any],
                       nuscenes: Any) -> Predictions:
    from gpicture.eval.occupancy import predictions_folder, write_predictions

    n = write_predictions(dataset, model, store, report_dir, int(sec.get("batch_size", 2)), nuscenes=nuscenes)
    return Predictions(predictions_folder(Path(report_dir)), n, "frames")


def _occupancy_score(dataset: str, predictions: Path, store: Path, report_dir: Path, nuscenes: Any) -> dict[str, Any]:
    from gpicture.eval.occupancy import score_predictions

    return score_predictions(dataset, predictions, store, report_dir, nuscenes)


FINETUNE = {"detection": _detection_finetune, "segmentation": _segmentation_finetune, "occupancy": _occupancy_finetune}
PREDICT = {"detection": _detection_predict, "segmentation": _segmentation_predict, "occupancy": _occupancy_predict}
SCORE = {"detection": _detection_score, "segmentation": _segmentation_score, "occupancy": _occupancy_score}
TASKS = tuple(FINETUNE)
