"""What every downstream fine-tuning run shares, whatever the task head.

A seeded label fraction, loading a pre-trained student into a task model (with a report
of loaded, missing and unexpected keys), the ``init_report.json`` written next to the
model, the run key that ties a checkpoint to its data, model and settings, and the
engine hook that tells a dataset the epoch (its augmentation is seeded by it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpicture.models.student import Student


def label_subset(n: int, fraction: float, seed: int) -> list[int]:
    """A seeded subset of round(fraction * n) frames (at least one), in store order."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--label-fraction must be in (0, 1], got {fraction}")
    k = max(1, round(fraction * n))
    return sorted(np.random.default_rng(seed).permutation(n)[:k].tolist())


def resolve_init(init: str, dataset: str) -> Path | None:
    """``pretrained`` -> models/pretrain/<dataset>/student.pt, ``scratch`` -> None, else a path
    (ValueError when the student file is missing)."""
    if init == "scratch":
        return None
    path = Path(f"models/pretrain/{dataset}/student.pt") if init == "pretrained" else Path(init)
    if not path.is_file():
        raise ValueError(f"{path}: no pre-trained student (run `gpicture pretrain --dataset {dataset}` "
                         "or pass --init scratch)")
    return path


def load_pretrained_student(student: Student, path: Path) -> dict[str, list[str]]:
    """Load a pre-trained student (``student.pt``) into ``student``; returns the loaded, missing
    and unexpected keys. A file that is no student, or whose weights do not fit (mismatched
    shapes, nothing loadable), is refused with a ValueError naming it."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != "gpicture-student":
        raise ValueError(f"{path}: not a gpicture pre-trained student (student.pt)")
    own = student.state_dict()
    weights = state["student"]
    loaded = [k for k in weights if k in own and own[k].shape == weights[k].shape]
    mismatched = [k for k in weights if k in own and own[k].shape != weights[k].shape]
    if not loaded or mismatched:
        raise ValueError(f"{path}: does not fit this student: {len(mismatched)} mismatched keys "
                         f"({', '.join(mismatched[:5])}), {len(loaded)} loadable")
    student.load_state_dict({k: weights[k] for k in loaded}, strict=False)
    return {"loaded": loaded, "missing": sorted(set(own) - set(loaded)), "unexpected": sorted(set(weights) - set(own))}


def init_student(student: Student, init: Path | None, out_dir: Path, label_fraction: float, frames: int,
                 write: bool = True) -> dict[str, Any]:
    """Initialise ``student`` from ``init`` (None: from scratch, as constructed) and write
    ``out_dir/init_report.json`` (when ``write``: the main process). Returns the report."""
    if init is None:
        report = {"loaded": [], "missing": "all (from scratch)", "unexpected": []}
    else:
        report = load_pretrained_student(student, init)
    summary = {"init": str(init) if init else "scratch", "label_fraction": label_fraction, "frames": frames,
               "loaded": len(report["loaded"]), "missing": report["missing"], "unexpected": report["unexpected"]}
    if write:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "init_report.json").write_text(json.dumps(summary, indent=1))
    return report


def finetune_run_key(task: str, dataset: str, model_params: dict[str, Any], store_fingerprint: str,
                     init: Path | None, label_fraction: float, **settings: Any) -> str:
    """The run key of a fine-tuning run (see :func:`gpicture.training.engine.fit`)."""
    from gpicture.teacher.checkpoint import file_sha256
    from gpicture.training.pretrain import run_key

    return run_key(task=task, dataset=dataset, model_params=model_params, store=store_fingerprint,
                   init=None if init is None else file_sha256(init), label_fraction=label_fraction,
                   **{k: str(v) for k, v in settings.items()})


class EpochHook:
    """Engine hooks for a dataset whose augmentation is seeded by the epoch: sets ``ds.epoch``."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def epoch_start(self, epoch: int) -> dict[str, float]:
        self.ds.epoch = epoch
        return {}

    def epoch_end(self, epoch: int, model: torch.nn.Module) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
