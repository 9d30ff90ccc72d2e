"""`gpicture evaluate`: score a fine-tuned model (or an external predictions file) on the val split."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import torch
import typer
from rich.console import Console

from gpicture.atomic import write_file_atomic
from gpicture.data.spec import DATASETS, dataset_spec
from gpicture.data.store import VoxelStore
from gpicture.eval.baselines import constant_predictions, majority_class
from gpicture.eval.predictions import RawSource
from gpicture.params import ParamsError, load_section
from gpicture.tasks.base import TaskName
from gpicture.training.finetune import load_model, predict
from stages.finetune import task_for


class Baseline(str, Enum):
    majority = "majority"


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
    try:
        spec = dataset_spec(dataset)
        sec = load_section(params, "evaluate", task.value)
        src = VoxelStore.open(store)
        if src.attrs["dataset"] != spec.name:
            raise ValueError(f"{store}: a {src.attrs['dataset']} store, not {spec.name}")
        source = RawSource.of_store(src.attrs, raw_root)  # where the official tools find the raw split
        if not source.root.exists():
            err.print(f"note: {source.root}: the raw split {store} was converted from is not there (from "
                      f"{Path.cwd()}); the official tools that read it need --raw-root", soft_wrap=True)
        impl = task_for(task, score_threshold=float(sec.get("score_threshold", 0.05)))
        report_dir = report_dir or Path(f"predictions/{dataset}/{task.value}")
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
            written = impl.write(spec, predict(impl, net, store, int(sec.get("batch_size", 2))), store, report_dir,
                                 source)
            predictions = written.path
            err.print(f"wrote {predictions}: {written.count} {written.unit}")
        metrics = impl.score(spec, predictions, store, report_dir, source)
    except (ParamsError, KeyError, OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    write_file_atomic(out, json.dumps(metrics, indent=1))
    if metrics.get("scenes_missing"):
        err.print(f"note: evaluated the {len(metrics['scenes'])} scene(s) of the split this dataset holds "
                  f"({', '.join(metrics['scenes'])}); {metrics['scenes_missing']} scene(s) of the split are not in it",
                  soft_wrap=True)
    head = {k: v for k, v in metrics.items() if isinstance(v, int | float | None) and k != "scenes_missing"}
    Console().print(f"wrote {out}: " + ", ".join(f"{k} {v:.4f}" if v is not None else f"{k} n/a"
                                                  for k, v in head.items()), soft_wrap=True)
