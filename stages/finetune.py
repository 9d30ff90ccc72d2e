"""`gpicture finetune`: fine-tune the student on a downstream task (single process or torchrun DDP)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import typer
from rich.console import Console

from gpicture.data.spec import DATASETS, dataset_spec
from gpicture.params import ParamsError, load_section, model_profile, with_profile
from gpicture.tasks.base import EvaluatedTask, TaskName
from gpicture.tasks.detection.task import DetectionTask
from gpicture.tasks.occupancy import OccupancyTask
from gpicture.tasks.segmentation import SegmentationTask
from gpicture.training.engine import DistInfo, TrainConfig
from gpicture.training.finetune import FinetuneRun, resolve_init
from gpicture.training.finetune import finetune as run_finetune
from gpicture.training.launch import claim_run, launch


def task_for(name: TaskName, score_threshold: float = 0.1) -> EvaluatedTask:
    """The task a stage runs (``score_threshold``: detection's, at inference)."""
    match name:
        case TaskName.detection:
            return DetectionTask(score_threshold=score_threshold)
        case TaskName.segmentation:
            return SegmentationTask()
        case TaskName.occupancy:
            return OccupancyTask()


def finetune(
    task: TaskName = typer.Option(..., help="The downstream task."),
    dataset: str = typer.Option(..., help=" or ".join(DATASETS) + "."),
    init: str | None = typer.Option(None, help="pretrained, scratch, or a student.pt path (params: finetune.init)."),
    label_fraction: float | None = typer.Option(None, help="Fraction of labelled frames (params: finetune.label_fraction)."),
    store: Path | None = typer.Option(None, help="Voxel store (default: data/zarr/<dataset>/train.zarr)."),
    out: Path | None = typer.Option(None, help="Output folder (default: models/<task>/<dataset>)."),
    epochs: int | None = typer.Option(None, help="Override finetune.<task>.epochs."),
    batch_size: int | None = typer.Option(None, help="Override finetune.<task>.batch_size (frames per process)."),
    seed: int | None = typer.Option(None, help="The fine-tuning seed (params: finetune.seed): it draws the labelled "
                                               "subset of --label-fraction, the head's init, the data order and the "
                                               "augmentation."),
    resume: bool = typer.Option(True, help="Continue from <out>/checkpoint.pt when present."),
    procs: int | None = typer.Option(None, help="Data-parallel processes, one thread each (params: finetune.procs; "
                                                "batch_size is per process)."),
    params: Path = typer.Option(Path("params.yaml"), help="The params file."),
) -> None:
    """Fine-tune a pre-trained (or scratch) student with a task head on labelled frames.
    Several processes: --procs N on one machine, or torchrun --nproc_per_node N $(which gpicture) finetune ..."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    err = Console(stderr=True)
    impl = task_for(task)
    try:
        spec = dataset_spec(dataset)
        profile, prof = model_profile(params, dataset)
        common = load_section(params, "finetune")
        sec = with_profile(load_section(params, "finetune", task.value), profile, dataset)
        sec["seed"] = int(seed if seed is not None else sec.get("seed", common.get("seed", 0)))
        if batch_size is not None:
            sec["batch_size"] = int(batch_size)
        cfg = TrainConfig.from_params(sec, epochs)
        settings = impl.settings(sec, spec)
        init_path = resolve_init(str(init or common.get("init", "pretrained")), dataset)
        fraction = float(label_fraction if label_fraction is not None else common.get("label_fraction", 1.0))
        store = store or Path(f"data/zarr/{dataset}/train.zarr")
        out = out or Path(f"models/{task.value}/{dataset}")
        n_procs = int(procs if procs is not None else sec.get("procs", common.get("procs", 1)))
    except (ParamsError, KeyError, OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    run = FinetuneRun(spec, prof, store, out, cfg, DistInfo(), init_path, fraction, resume=resume)
    try:
        with claim_run(out):  # one writer per run folder
            metrics = launch(finetune_rank, (impl, settings, run), n_procs)
    except (ValueError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    if metrics is not None:  # None on the ranks > 0 of a torchrun launch
        Console().print(f"wrote {out}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()), soft_wrap=True)


def finetune_rank(dist: DistInfo, impl: EvaluatedTask, settings, run: FinetuneRun) -> dict[str, float] | None:
    """One process's part of a fine-tune (gpicture.training.launch): rank 0 returns the metrics."""
    metrics = run_finetune(impl, settings, dataclasses.replace(run, dist=dist))
    return metrics if dist.is_main else None
