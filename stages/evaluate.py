"""`gpicture evaluate`: score a fine-tuned model (or an external predictions file) on the val split."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import ExitStack
from enum import Enum
from pathlib import Path

import torch
import typer
from rich.console import Console

from gpicture.atomic import claim_output, write_file_atomic
from gpicture.data.spec import DATASETS, dataset_spec
from gpicture.data.store import VoxelStore
from gpicture.eval.baselines import constant_predictions, majority_class
from gpicture.eval.predictions import RawSource
from gpicture.params import ParamsError, Section, load_section
from gpicture.provenance import provenance
from gpicture.tasks.base import TaskName
from gpicture.training.finetune import load_model, predict
from stages.finetune import task_for


class Baseline(str, Enum):
    majority = "majority"


def check_writable(path: Path, folder: bool = False) -> None:
    """OSError naming ``path`` unless a file (or, with ``folder``, files inside it) can be written
    there: probed with a temporary file in the nearest existing folder, which nothing else
    touches, so a read-only output fails before the (long) scoring, not after it."""
    if path.is_dir() and not folder:
        raise OSError(f"{path}: is a folder, not a metrics file")
    if path.exists() and not path.is_dir() and folder:
        raise OSError(f"{path}: is a file, not a folder")
    parent = path if folder else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OSError(f"{path}: cannot be written ({parent} is not a folder)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".gpicture-write-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(f"{path}: cannot be written ({exc.strerror or exc} in {parent})") from None


def evaluate(
    task: TaskName = typer.Option(..., help="The downstream task."),
    dataset: str = typer.Option(..., help=" or ".join(DATASETS) + "."),
    model: Path | None = typer.Option(None, help="Fine-tuned model (default: models/<task>/<dataset>/model.pt)."),
    predictions: Path | None = typer.Option(None, help="Score these predictions instead of running the model: detection: "
                                                       "a nuScenes submission JSON / Waymo metrics_pb2.Objects file; "
                                                       "segmentation: a lidarseg folder; occupancy: a folder of .npy."),
    store: Path | None = typer.Option(None, help="Voxel store of the split (default: data/zarr/<dataset>/val.zarr)."),
    out: Path | None = typer.Option(None, help="Metrics JSON (default: metrics/<dataset>/<task>.json)."),
    report_dir: Path | None = typer.Option(None, help="Folder for the model's predictions and the metric's own reports "
                                                      "(default: predictions/<dataset>/<task>)."),
    baseline: Baseline | None = typer.Option(None, help="Score a reference instead of a model: majority = the most "
                                                        "frequent class of --train-store for every point "
                                                        "(segmentation)."),
    train_store: Path | None = typer.Option(None, help="The training store a baseline is taken from "
                                                       "(default: data/zarr/<dataset>/train.zarr)."),
    raw_root: Path | None = typer.Option(None, help="Where the store's raw split lies now, for the official tools "
                                                    "(default: the root the store was converted from)."),
    params: Path = typer.Option(Path("params.yaml"), help="The params file."),
) -> None:
    """Evaluate on the val split with the dataset's official metric and write the metrics."""
    err = Console(stderr=True)
    store = store or Path(f"data/zarr/{dataset}/val.zarr")
    out = out or Path(f"metrics/{dataset}/{task.value}.json")
    with ExitStack() as claims:
        try:
            spec = dataset_spec(dataset)
            sec = Section(params, f"evaluate.{task.value}", load_section(params, "evaluate", task.value))
            score_threshold = sec.number("score_threshold", 0.0, 1.0, default=0.05)
            batch_size = sec.integer("batch_size", 1, default=2)
            report_dir = report_dir or Path(f"predictions/{dataset}/{task.value}")
            check_writable(out)  # before scoring: a read-only --out must not cost a whole evaluation
            check_writable(report_dir, folder=True)
            # one writer per metrics file and predictions folder (gpicture.atomic), held to the end
            claims.enter_context(claim_output(out, "metrics", exist_ok=True))
            claims.enter_context(claim_output(report_dir, "predictions", exist_ok=True))
            if predictions is not None and predictions.is_file() and predictions.stat().st_size == 0:
                raise ValueError(f"{predictions}: an empty predictions file (0 bytes): not scored. (A Waymo Objects file "
                                 "without a single box is 0 bytes too; to score a model that detects nothing, run "
                                 "evaluate on the model, without --predictions)")
            src = VoxelStore.open(store)
            if src.attrs.get("dataset") != spec.name:
                raise ValueError(f"{store}: a {src.attrs.get('dataset')} store, but the evaluation is on {spec.name} "
                                 f"(--dataset {spec.name}): pass a {spec.name} store")
            source = RawSource.of_store(src.attrs, raw_root)  # where the official tools find the raw split
            if not source.root.exists():
                err.print(f"note: {source.root}: the raw split {store} was converted from is not there (from "
                          f"{Path.cwd()}); the official tools that read it need --raw-root", soft_wrap=True)
            impl = task_for(task, score_threshold=score_threshold)
            if baseline is not None:
                if task is not TaskName.segmentation or predictions is not None:
                    raise ValueError("--baseline majority scores segmentation, without --predictions")
                major = majority_class(spec, train_store or Path(f"data/zarr/{dataset}/train.zarr"))
                err.print(f"baseline: {major.name} (class {major.label}, {major.fraction:.1%} of the labelled training "
                          "points) for every point", soft_wrap=True)
                predictions = impl.write(spec, constant_predictions(spec, store, major.label), store, report_dir,
                                         source).path
            if predictions is None:
                net = load_model(impl, model or Path(f"models/{task.value}/{dataset}/model.pt"), spec, src.attrs)
                if torch.cuda.is_available():
                    net = net.cuda()
                written = impl.write(spec, predict(impl, net, store, batch_size), store, report_dir,
                                     source)
                predictions = written.path
                err.print(f"wrote {predictions}: {written.count} {written.unit}")
            metrics = impl.score(spec, predictions, store, report_dir, source)
        except (ParamsError, KeyError, OSError, ValueError) as exc:
            err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None
        try:
            write_file_atomic(out, json.dumps({**metrics, "provenance": provenance()}, indent=1))
        except OSError as exc:
            err.print(f"[red]error:[/red] {out}: cannot be written ({exc.strerror or exc})", soft_wrap=True)
            raise typer.Exit(2) from None
    if metrics.get("scenes_missing"):
        err.print(f"note: evaluated the {len(metrics['scenes'])} scene(s) of the split this dataset holds "
                  f"({', '.join(metrics['scenes'])}); {metrics['scenes_missing']} scene(s) of the split are not in it",
                  soft_wrap=True)
    head = {k: v for k, v in metrics.items() if isinstance(v, int | float | None) and k != "scenes_missing"}
    Console().print(f"wrote {out}: " + ", ".join(f"{k} {v:.4f}" if v is not None else f"{k} n/a"
                                                  for k, v in head.items()), soft_wrap=True)
