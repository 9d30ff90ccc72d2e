"""One fine-tuning run and one prediction loop for every downstream task.

A task (:mod:`gpicture.tasks.detection`, ``segmentation``, ``occupancy``) implements the
small :class:`FinetuneTask` protocol: which frames carry its labels, its dataset and
collate, its model (built from a typed head configuration, the part of its settings that
shapes the model), its loss and its inference. :func:`finetune` runs the shared recipe on
it — a seeded label fraction, a pre-trained or scratch student (with a report of loaded,
missing and unexpected keys), the training engine with a run key, the model file —
and :func:`predict` runs a fine-tuned model over a split.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from gpicture.atomic import OutputError, write_file_atomic
from gpicture.data.spec import DatasetSpec
from gpicture.data.store import VoxelStore
from gpicture.models.student import Student
from gpicture.teacher.checkpoint import file_sha256
from gpicture.training.engine import (
    DistInfo,
    StepContext,
    TrainConfig,
    check_finite,
    fit,
    load_checkpoint_file,
    load_weights,
    run_key,
    save_atomic,
    unwrap,
)
from gpicture.workers import raise_if_stopped

log = logging.getLogger(__name__)

ConfigT = TypeVar("ConfigT")
HeadT = TypeVar("HeadT")
ModelT = TypeVar("ModelT", bound=nn.Module)
BatchT = TypeVar("BatchT")
PredT = TypeVar("PredT")


class TaskDataset(Protocol):
    """A torch Dataset of a task's typed items whose augmentation is seeded by ``epoch``."""

    epoch: int

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Any: ...


class FinetuneTask(Protocol[ConfigT, HeadT, ModelT, BatchT, PredT]):
    """What :func:`finetune` and :func:`predict` need of a downstream task."""

    name: str  # "detection", ...: the model file's format is f"gpicture-{name}"

    def labelled_frames(self, store: VoxelStore, spec: DatasetSpec) -> list[int]:
        """Store indices of the frames that carry this task's labels (ValueError if none)."""
        ...

    def dataset(self, store: Path, spec: DatasetSpec, feature_names: list[str], frames: list[int],
                settings: ConfigT, seed: int) -> TaskDataset:
        """Training items of ``frames`` with ``settings``' augmentation (seeded by ``seed``)."""
        ...

    def prediction_set(self, model: ModelT, store: Path) -> TaskDataset:
        """The items a fine-tuned ``model`` predicts on a split, in store order, unaugmented."""
        ...

    collate: Callable[[list[Any]], BatchT]  # items -> batch
    head_type: type[HeadT]  # `settings.head`, the settings that shape the model (saved with it), has from_dict

    def build(self, spec: DatasetSpec, model_params: dict[str, Any], store_attrs: dict[str, Any],
              head: HeadT) -> ModelT: ...

    def loss(self, model: nn.Module, batch: BatchT) -> tuple[Tensor, dict[str, float]]:
        """The training loss; ``model`` may be wrapped by DDP (forward through the wrapper)."""
        ...

    def infer(self, model: ModelT, batch: BatchT, frame_ids: list[str]) -> list[PredT]:
        """One prediction per frame of the batch (``frame_ids`` its frames' ids)."""
        ...


@dataclass(frozen=True)
class FinetuneRun:
    """What every fine-tuning run takes besides its task and the task's settings."""

    spec: DatasetSpec
    model_params: dict[str, Any]  # the dataset's model profile
    store: Path  # the labelled (train) split
    out_dir: Path
    train: TrainConfig
    dist: DistInfo
    init: Path | None = None  # a pre-trained student.pt; None: from scratch
    label_fraction: float = 1.0
    resume: bool = True
    progress: bool = True


def label_subset(n: int, fraction: float, seed: int) -> list[int]:
    """A seeded subset of round(fraction * n) of n items (at least one), in order. For one seed
    the subsets of growing fractions are nested (the first k of one seeded permutation); another
    seed draws another subset (fraction 1: all items, whatever the seed)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"the label fraction must be in (0, 1], got {fraction}")
    k = max(1, round(fraction * n))
    return sorted(np.random.default_rng(seed).permutation(n)[:k].tolist())


def resolve_init(init: str, dataset: str) -> Path | None:
    """``pretrained`` -> models/pretrain/<dataset>/student.pt, ``scratch`` -> None, else a path
    (ValueError when the student file is missing)."""
    if init == "scratch":
        return None
    path = Path(f"models/pretrain/{dataset}/student.pt") if init == "pretrained" else Path(init)
    if path.is_dir():
        raise ValueError(f"{path}: a folder, not a pre-trained student file (--init takes pretrained, scratch "
                         "or the path of a student.pt that `gpicture pretrain` wrote)")
    if not path.is_file():
        raise ValueError(f"{path}: no pre-trained student (run `gpicture pretrain --dataset {dataset}` "
                         "or pass --init scratch)")
    return path


def check_student_record(state: dict[str, Any], student: Student, path: Path, dataset: str | None) -> None:
    """ValueError naming ``path`` when the pre-trained student was made for another dataset
    than ``dataset`` (None: not checked), another grid or other point features than ``student``;
    a warning for other model-profile differences and for a file without the record (written
    before ``student.pt`` recorded them): same-shaped weights of another dataset or grid load
    without error but mean something else."""
    cfg = student.cfg
    if state.get("dataset") is None or state.get("grid") is None:
        log.warning("%s: records no dataset or grid (an older student.pt): loading it unchecked", path)
    if dataset is not None and state.get("dataset") is not None and state["dataset"] != dataset:
        raise ValueError(f"{path}: a student pre-trained on {state['dataset']}, but this fine-tune is on {dataset}: "
                         f"pre-train on {dataset} (gpicture pretrain --dataset {dataset}) or pass --init scratch")
    grid = state.get("grid")
    if grid is not None:
        want = cfg.grid
        differ = [f"{k} {list(grid.get(k) or [])} (here {want[k]})" for k in want
                  if grid.get(k) is None or len(grid[k]) != len(want[k])
                  or not np.allclose(np.asarray(grid[k], float), np.asarray(want[k], float), rtol=0, atol=1e-6)]
        if differ:
            raise ValueError(f"{path}: pre-trained on another grid than this store's: {'; '.join(differ)}; "
                             "pre-train on a store of this grid or pass --init scratch")
    params = state.get("model_params") or {}
    if "point_features" in params and tuple(params["point_features"]) != tuple(cfg.point_features):
        raise ValueError(f"{path}: pre-trained on the point features {list(params['point_features'])}, this model "
                         f"takes {list(cfg.point_features)}; pre-train with this model profile or pass --init scratch")


def load_pretrained_student(student: Student, path: Path, dataset: str | None = None) -> dict[str, list[str]]:
    """Load a pre-trained student (``student.pt``) into ``student``; returns the loaded,
    missing and unexpected keys. A file that is no readable student, one with NaN / inf
    weights, one pre-trained on another dataset than ``dataset`` or another grid
    (:func:`check_student_record`), or whose weights do not fit (mismatched shapes, nothing
    loadable), is refused with a ValueError naming it."""
    path = Path(path)
    state = load_checkpoint_file(path)
    if not isinstance(state, dict) or state.get("format") != "gpicture-student" \
            or not isinstance(state.get("student"), dict):
        raise ValueError(f"{path}: not a gpicture pre-trained student (student.pt)")
    weights = state["student"]
    check_finite(weights, path, "the file is damaged or its pre-training diverged: use another one")
    check_student_record(state, student, path, dataset)
    own = student.state_dict()
    loaded = [k for k in weights if k in own and own[k].shape == weights[k].shape]
    mismatched = [k for k in weights if k in own and own[k].shape != weights[k].shape]
    if not loaded or mismatched:
        raise ValueError(f"{path}: does not fit this student: {len(mismatched)} mismatched keys "
                         f"({', '.join(mismatched[:5])}), {len(loaded)} loadable")
    student.load_state_dict({k: weights[k] for k in loaded}, strict=False)
    return {"loaded": loaded, "missing": sorted(set(own) - set(loaded)), "unexpected": sorted(set(weights) - set(own))}


def init_student(student: Student, init: Path | None, out_dir: Path, label_fraction: float, frames: int,
                 write: bool = True, seed: int | None = None, frame_indices: list[int] | None = None,
                 dataset: str | None = None) -> dict[str, Any]:
    """Initialise ``student`` from ``init`` (None: from scratch, as constructed; a student
    pre-trained on another ``dataset`` is refused) and write ``out_dir/init_report.json``
    (when ``write``: the main process), with the run's ``seed`` and the store indices of its
    labelled frames when given. Returns the report."""
    if init is None:
        report = {"loaded": [], "missing": "all (from scratch)", "unexpected": []}
    else:
        report = load_pretrained_student(student, init, dataset)
    summary = {"init": str(init) if init else "scratch", "label_fraction": label_fraction, "frames": frames,
               "loaded": len(report["loaded"]), "missing": report["missing"], "unexpected": report["unexpected"]}
    if seed is not None:
        summary["seed"] = seed
    if frame_indices is not None:
        summary["frame_indices"] = list(frame_indices)
    if write:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        report_path = out_dir / "init_report.json"
        try:
            write_file_atomic(report_path, json.dumps(summary, indent=1))  # never a truncated report (a full disk)
        except OSError as exc:
            raise OutputError(f"{report_path}: cannot be written ({exc.strerror or exc})") from None
    return report


class EpochHook:
    """Engine hooks for a dataset whose augmentation is seeded by the epoch: sets ``ds.epoch``."""

    def __init__(self, ds: TaskDataset) -> None:
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


def _step(model: nn.Module, batch: Any, ctx: StepContext, task: FinetuneTask) -> tuple[Tensor, dict[str, float]]:
    return task.loss(model, batch.to(ctx.device))


def finetune(task: FinetuneTask[ConfigT, HeadT, ModelT, Any, Any], settings: ConfigT,
             run: FinetuneRun) -> dict[str, float]:
    """Fine-tune ``task``'s model on ``run.label_fraction`` of the labelled frames of ``run.store``;
    writes ``model.pt``, ``init_report.json``, ``checkpoint.pt`` and dvclive logs in
    ``run.out_dir`` and returns the last epoch's mean losses.

    ``run.train.seed`` drives every random choice of the run: the labelled subset
    (:func:`label_subset`), the initialisation of whatever the pre-trained student does not
    provide (the head; everything from scratch), the data order and the augmentation. The
    label-efficiency study's seeds therefore vary both the subset and the training."""
    spec, seed = run.spec, run.train.seed
    src = VoxelStore.open(run.store)
    if src.attrs.get("dataset") != spec.name:
        raise ValueError(f"{run.store}: a {src.attrs.get('dataset')} store, but the fine-tune is on {spec.name} "
                         f"(--dataset {spec.name}): pass a {spec.name} store")
    labelled = task.labelled_frames(src, spec)
    frames = [labelled[i] for i in label_subset(len(labelled), run.label_fraction, seed)]
    ds = task.dataset(run.store, spec, list(run.model_params["point_features"]), frames, settings, seed)
    torch.manual_seed(seed)
    head = settings.head
    model = task.build(spec, run.model_params, src.attrs, head)
    out_dir = Path(run.out_dir)
    init_student(model.student, run.init, out_dir, run.label_fraction, len(frames), write=run.dist.is_main, seed=seed,
                 frame_indices=frames, dataset=spec.name)
    key = run_key(task=task.name, dataset=spec.name, model_params=run.model_params, store=src.fingerprint,
                  init=None if run.init is None else file_sha256(run.init), label_fraction=run.label_fraction,
                  settings=str(settings))
    metrics = fit(model, ds, task.collate, functools.partial(_step, task=task), run.train, out_dir, run.dist,
                  hooks=EpochHook(ds), progress=run.progress, run_key=key, resume=run.resume, frame_ids=src.frame_ids)
    raise_if_stopped()  # SIGTERM / SIGINT after the last step: interrupted, so no final model
    if run.dist.is_main:
        save_atomic({"format": f"gpicture-{task.name}", "dataset": spec.name, "model_params": run.model_params,
                     "head": dataclasses.asdict(head), "state": unwrap(model).state_dict()}, out_dir / "model.pt")
    return metrics


def load_model(task: FinetuneTask[Any, Any, ModelT, Any, Any], path: Path, spec: DatasetSpec,
               store_attrs: dict[str, Any]) -> ModelT:
    """A model written by :func:`finetune` for ``task``, in eval mode on the CPU. A file that is
    no such model, one for another dataset than the store's, or weights that do not fit the
    model they describe are refused with a ValueError naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such {task.name} model")
    state = load_checkpoint_file(path)
    fmt = f"gpicture-{task.name}"
    if not isinstance(state, dict) or state.get("format") != fmt or not isinstance(state.get("state"), dict):
        raise ValueError(f"{path}: not a gpicture {task.name} model (format {fmt!r})")
    if state.get("dataset") != spec.name or store_attrs.get("dataset") != spec.name:
        raise ValueError(f"{path}: a {state.get('dataset')} model, the store holds {store_attrs.get('dataset')} "
                         f"and the evaluation is on {spec.name}")
    check_finite(state["state"], path, "the model is damaged or its fine-tuning diverged: fine-tune it again")
    model = task.build(spec, state["model_params"], store_attrs, task.head_type.from_dict(state["head"]))
    return load_weights(model, state["state"], path)


@torch.no_grad()
def predict(task: FinetuneTask[Any, Any, ModelT, Any, PredT], model: ModelT, store: Path,
            batch_size: int = 2) -> Iterator[PredT]:
    """``task``'s predictions for the frames of ``store`` (the task's prediction frames, in
    store order), on the model's device; a generator: a split is never held in memory whole."""
    model.eval()
    device = next(model.parameters()).device
    ds = task.prediction_set(model, Path(store))
    ids = VoxelStore.open(store).frame_ids
    for b0 in range(0, len(ds), batch_size):
        batch = task.collate([ds[i] for i in range(b0, min(b0 + batch_size, len(ds)))])
        frame_ids = [ids[k] for k in batch.voxels.frame_index.tolist()]
        yield from task.infer(model, batch.to(device), frame_ids)
