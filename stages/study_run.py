"""`gpicture study-run`: every run of one (task, initialisation) of the label-efficiency study.

The study (params ``study``) fine-tunes each task from each initialisation on every label
fraction with every seed, then scores it on val with the official metric. One DVC stage
per (init, task) runs its fractions x seeds here, ``study.jobs`` at a time in worker
processes of one thread each: on the 2-core CPU two single-thread fine-tunes get more done
than one fine-tune on two threads (small sparse kernels scale poorly across threads), and
one process per stage pays the imports (torch, spconv, the devkit: ~7 s) once per worker
instead of twice per run. Each run is exactly ``gpicture finetune`` + ``gpicture evaluate``
(the same functions), writing

    models/study/<task>/<init>/<fraction>-s<seed>/   model.pt, init_report.json, dvclive/, eval/
    metrics/study/<task>/<init>/<fraction>-s<seed>.json
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import click
import typer
from rich.console import Console

from gpicture.atomic import claim_output
from gpicture.params import ParamsError, Section, load_section
from gpicture.study import StudySpec, run_metrics_path, run_path
from gpicture.tasks.base import TaskName
from gpicture.workers import pool_as_completed
from stages.evaluate import evaluate
from stages.finetune import finetune


@dataclass(frozen=True)
class StudyJob:
    """One fine-tune + evaluation of the study."""

    task: str
    dataset: str
    init: str  # what `gpicture finetune --init` takes: scratch or a student.pt path
    fraction: float
    seed: int
    epochs: int | None  # params study.epochs.<task>; None: finetune.<task>.epochs
    batch_size: int  # frames a step in the run's one process: the main fine-tune's procs x batch_size
    run_dir: Path
    metrics: Path
    params: Path

    @property
    def name(self) -> str:
        return f"{self.task} {self.run_dir.parent.name} {self.run_dir.name}"


def plan(spec: StudySpec, task: str, init_name: str, init: str, params: Path, epochs: int | None = None,
         batch_size: int = 2, runs: Path = Path("models/study"), metrics: Path = Path("metrics/study")) -> list[StudyJob]:
    """The jobs of one (task, init), largest label fraction first (the longest runs start
    first, so the workers finish together)."""
    jobs = [StudyJob(task, spec.dataset, init, fraction, seed, epochs, batch_size, run_path(runs, task, init_name, fraction, seed),
                     run_metrics_path(metrics, task, init_name, fraction, seed), params)
            for fraction in spec.fractions for seed in spec.seeds]
    return sorted(jobs, key=lambda j: -float(j.fraction))


def _worker_init() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch  # noqa: PLC0415  (third-party; threads are set per worker process)

    torch.set_num_threads(1)


def run_job(job: StudyJob) -> float:
    """Fine-tune and evaluate one run (in a worker); returns its seconds. The stage functions
    report their own errors and exit; that exit becomes a RuntimeError naming the run."""
    t = time.perf_counter()
    try:
        finetune(task=TaskName(job.task), dataset=job.dataset, init=job.init, label_fraction=float(job.fraction),
                 store=None, out=job.run_dir, epochs=job.epochs, batch_size=job.batch_size,
                 seed=job.seed, resume=False, procs=1, force=False,
                 params=job.params)
        evaluate(task=TaskName(job.task), dataset=job.dataset, model=job.run_dir / "model.pt", predictions=None,
                 store=None, out=job.metrics, report_dir=job.run_dir / "eval", baseline=None, train_store=None,
                 raw_root=None, params=job.params)
    except click.exceptions.Exit as exc:
        raise RuntimeError(f"study run {job.name} failed (exit {exc.exit_code}); its error is above") from None
    (job.run_dir / "checkpoint.pt").unlink(missing_ok=True)  # written by this run for resuming; not an output
    return time.perf_counter() - t


def study_run(
    task: TaskName = typer.Option(..., help="The downstream task."),
    init: str = typer.Option(..., help="The initialisation: a name of params study.inits (gpicture, noteacher, scratch)."),
    jobs: int | None = typer.Option(None, help="Runs at a time, one thread each (params: study.jobs)."),
    params: Path = typer.Option(Path("params.yaml"), help="The params file (section study: the planned runs)."),
) -> None:
    """Fine-tune and evaluate every label fraction x seed of one (task, init) of the study."""
    err = Console(stderr=True)
    try:
        sec = load_section(params, "study")
        spec = StudySpec.from_params(sec)
        inits = dict(sec["inits"])
        if init not in inits:
            raise ValueError(f"study.inits has no {init!r} (has {', '.join(inits)})")
        if task.value not in spec.tasks:
            raise ValueError(f"study.tasks has no {task.value!r}")
        study = Section(params, "study", sec)
        n_jobs = study.integer("jobs", 1, default=1, override=jobs, option="--jobs")
        per_task = study.sub("epochs") if study.raw("epochs", None) is not None else None
        epochs = per_task.integer(task.value, 1) if per_task is not None and task.value in per_task else None
        # the main fine-tune's frames a step, in one process here
        common, ft = Section.load(params, "finetune"), Section.load(params, "finetune", task.value)
        batch = ft.integer("batch_size", 1) * (ft if "procs" in ft else common).integer("procs", 1, default=1)
        if str(inits[init]) != "scratch" and not Path(inits[init]).is_file():
            raise ValueError(f"study.inits.{init}: {inits[init]} is not there (run its pre-training stage first)")
    except (ParamsError, KeyError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    todo = plan(spec, task.value, init, str(inits[init]), params, epochs, batch)
    err.print(f"study {task.value} / {init}: {len(todo)} runs, {n_jobs} at a time")
    t0 = time.perf_counter()
    try:
        # one writer per (task, init): its two folders are claimed for the whole stage (gpicture.atomic)
        with claim_output(Path("models/study") / task.value / init, "study-runs", exist_ok=True), \
                claim_output(Path("metrics/study") / task.value / init, "study-metrics", exist_ok=True):
            # fresh single-thread interpreters (spawn: no forked torch thread pools); the first run that
            # fails, or a Ctrl-C, ends the pool (gpicture.workers)
            for k, (i, seconds) in enumerate(pool_as_completed(run_job, [(j,) for j in todo], n_jobs,
                                                               init=_worker_init, start_method="spawn"), 1):
                err.print(f"study {k}/{len(todo)} done: {todo[i].name} in {seconds:.0f} s "
                          f"({time.perf_counter() - t0:.0f} s so far)")
    except (RuntimeError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    Console().print(f"wrote models/study/{task.value}/{init} and metrics/study/{task.value}/{init}: "
                    f"{len(todo)} runs in {time.perf_counter() - t0:.0f} s", soft_wrap=True)
