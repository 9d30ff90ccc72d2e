"""`gpicture teacher`: cache the frozen Seal teacher's features per canonical voxel."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from gpicture.data.store import VoxelStore
from gpicture.params import ParamsError, load_section
from gpicture.teacher import SealTeacher
from gpicture.teacher.cache import TeacherConfig, build_teacher_store


def teacher(
    store: Path = typer.Option(..., help="The voxel store to compute features for."),
    out: Path = typer.Option(..., help="The teacher store to write."),
    checkpoint: Path | None = typer.Option(None, help="Teacher checkpoint: the one `gpicture teacher-fit` wrote "
                                                      "(models/teacher/<dataset>/teacher.pt, what the pipeline passes), "
                                                      "or a Seal / SLidR Res16UNet34C file (params: teacher.checkpoint)."),
    init: str | None = typer.Option(None, help="With no checkpoint: random (a seeded random teacher, for tests) "
                                               "(params: teacher.init)."),
    dtype: str | None = typer.Option(None, help="float16 or int8 (params: teacher.dtype)."),
    device: str | None = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing teacher store at --out (anything "
                                                    "else there is refused, never deleted)."),
    params: Path = typer.Option(Path("params.yaml"), help="The params file."),
) -> None:
    """Compute the teacher features of every canonical voxel of a store (resumable)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    err = Console(stderr=True)
    try:
        sec = load_section(params, "teacher")
        source = VoxelStore.open(store)
        dataset = source.attrs["dataset"]
        cfg = TeacherConfig.from_params(sec, dataset, dtype=dtype)
        cfg.validate()
        ckpt = checkpoint if checkpoint is not None else sec.get("checkpoint")
        if ckpt is None and (init or sec.get("init", "standin")) != "random":
            raise ValueError(f"no teacher checkpoint: `gpicture teacher-fit --dataset {dataset}` makes one "
                             f"(models/teacher/{dataset}/teacher.pt; `dvc repro` runs it), pass it with --checkpoint, "
                             "or choose a seeded random teacher with --init random (tests only)")
        import torch

        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        net = SealTeacher.from_checkpoint(ckpt, device=dev, seed=int(sec.get("seed", 0)))
        trained = (net.metadata or {}).get("input_convention")
        if trained is not None and trained != cfg.convention():
            raise ValueError(f"{ckpt}: trained with the teacher voxelization {trained}, but params ask for "
                             f"{cfg.convention()}; rerun gpicture teacher-fit (or dvc repro)")
    except (ParamsError, ValueError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    err.print(f"teacher: {net.description}", soft_wrap=True)
    with Progress(TextColumn("teacher"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("frames", total=len(source))
        try:
            summary = build_teacher_store(store, out, net, cfg, force=force,
                                          progress=lambda done, total: bar.update(task, completed=done))
        except (ValueError, OSError) as exc:
            err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None
    Console().print(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in summary.items()), soft_wrap=True)
