"""`gpicture finetune`: fine-tune the student on a downstream task (single process or torchrun DDP)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import typer
from rich.console import Console

from gpicture.data.spec import DATASETS, dataset_spec
from gpicture.params import ParamsError, Section, model_profile
from gpicture.tasks.base import EvaluatedTask, TaskName
from gpicture.tasks.detection.task import DetectionTask
from gpicture.tasks.occupancy import OccupancyTask
from gpicture.tasks.segmentation import SegmentationTask
from gpicture.training.engine import DistInfo, TrainConfig
from gpicture.training.finetune import FinetuneRun, resolve_init
from gpicture.training.finetune import finetune as run_finetune
from gpicture.training.launch import error_message, launch
from gpicture.training.run_folder import claim_run, finetune_run


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
    force: bool = typer.Option(False, "--force", help="Start afresh in an existing fine-tuning run folder of this "
                                                    "task at --out (its checkpoint, model.pt and logs removed first); "
                                                    "a folder holding anything else is refused, never deleted."),
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
        common = Section.load(params, "finetune")
        sec = Section.load(params, "finetune", task.value, profile=profile, dataset=dataset)
        # a task's own seed / procs, else the fine-tuning's (finetune.seed, finetune.procs); the option beats both
        seed_from = sec if "seed" in sec else common
        sec.values["seed"] = seed_from.integer("seed", 0, default=0, override=seed, option="--seed")
        cfg = TrainConfig.from_section(sec, epochs, batch_size)
        settings = impl.settings(sec, spec)
        init_path = resolve_init(common.text("init", default="pretrained", override=init, option="--init"), dataset)
        fraction = common.fraction("label_fraction", default=1.0, override=label_fraction, option="--label-fraction")
        store = store or Path(f"data/zarr/{dataset}/train.zarr")
        out = out or Path(f"models/{task.value}/{dataset}")
        n_procs = (sec if "procs" in sec else common).integer("procs", 1, default=1, override=procs, option="--procs")
    except (ParamsError, KeyError, OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    try:
        with claim_run(out, finetune_run(task.value), force=force) as folder:  # one writer per run folder, ours
            run = FinetuneRun(spec, prof, store, folder, cfg, DistInfo(), init_path, fraction, resume=resume)
            metrics = launch(finetune_rank, (impl, settings, run), n_procs)
    except (ValueError, OSError) as exc:
        err.print(f"[red]error:[/red] {error_message(exc)}", soft_wrap=True)
        raise typer.Exit(2) from None
    if metrics is not None:  # None on the ranks > 0 of a torchrun launch
        Console().print(f"wrote {out}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()), soft_wrap=True)


def finetune_rank(dist: DistInfo, impl: EvaluatedTask, settings, run: FinetuneRun) -> dict[str, float] | None:
    """One process's part of a fine-tune (gpicture.training.launch): rank 0 returns the metrics."""
    metrics = run_finetune(impl, settings, dataclasses.replace(run, dist=dist))
    return metrics if dist.is_main else None
