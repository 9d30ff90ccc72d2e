"""What ``gpicture finetune`` / ``gpicture evaluate`` need of a task, and which tasks exist."""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, TypeVar

from gpicture.data.spec import DatasetSpec
from gpicture.eval.predictions import RawSource, Written
from gpicture.training.finetune import FinetuneTask

PredT = TypeVar("PredT")
ConfigT = TypeVar("ConfigT")


class TaskName(str, Enum):
    """The downstream tasks (the stages pick one with ``match``)."""

    detection = "detection"
    segmentation = "segmentation"
    occupancy = "occupancy"


class EvaluatedTask(FinetuneTask[ConfigT, Any, Any, Any, PredT], Protocol[ConfigT, PredT]):
    """A fine-tunable task that also writes its predictions officially and scores them."""

    def settings(self, sec: dict[str, Any], spec: DatasetSpec) -> ConfigT:
        """The task's settings from its (profile-merged) ``finetune.<task>`` params section."""
        ...

    def write(self, spec: DatasetSpec, preds: Iterable[PredT], store: Path, report_dir: Path,
              source: RawSource | None) -> Written:
        """Write the predictions of a split in the dataset's official format under ``report_dir``."""
        ...

    def score(self, spec: DatasetSpec, predictions: Path, store: Path, report_dir: Path,
              source: RawSource | None) -> dict[str, Any]:
        """The metrics of a predictions file or folder on the split of ``store``."""
        ...
