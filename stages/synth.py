"""`gpicture synth`: procedural driving scenes written as real nuScenes / Waymo data."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gpicture.params import ParamsError, Section
from gpicture.synth.generate import (
    SynthConfig,
    SynthError,
    generate_nuscenes,
    generate_nuscenes_pretrain,
    generate_waymo,
    generate_waymo_pretrain,
)


class Dataset(str, Enum):
    nuscenes = "nuscenes"
    waymo = "waymo"


def synth(
    dataset: Dataset = typer.Argument(..., help="Which dataset format to write."),
    out: Path | None = typer.Option(None, help="Output folder (params: synth.<dataset>.out, with --pretrain "
                                               "synth.pretrain.<dataset>.out)."),
    pretrain: bool = typer.Option(False, "--pretrain", help="Write the dataset's pre-training pool instead: "
                                  "synth.pretrain.<dataset>.scenes more scenes (segments) of their own seed stream, "
                                  "in their own root, converted as the unlabelled `pretrain` split."),
    scenes: int | None = typer.Option(None, help="Scenes (nuScenes) / segments (Waymo)."),
    frames: int | None = typer.Option(None, help="Keyframes per scene (nuScenes, 2 Hz) / frames per segment (Waymo, 10 Hz)."),
    seed: int | None = typer.Option(None, help="Random seed (params: synth.seed)."),
    workers: int | None = typer.Option(None, help="Parallel processes (params: synth.workers)."),
    density: float | None = typer.Option(None, help="Traffic density (1.0: busy city street)."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier synthetic dataset of this format "
                                                    "at --out (anything else there is refused, never deleted)."),
    params: Path = typer.Option(Path("params.yaml"), help="The params file."),
) -> None:
    """Generate procedural driving scenes with exact labels, in the real dataset format."""
    err = Console(stderr=True)
    try:  # params values checked here, naming their key; the options' values by SynthConfig, naming the option
        top = Section.load(params, "synth")
        sec = Section.load(params, "synth", dataset.value)
        pool = Section.load(params, "synth", "pretrain", dataset.value) if pretrain else None
        labelled = SynthConfig(
            scenes=sec.integer("scenes", 1),
            frames=frames if frames is not None else sec.integer("frames", 1),
            seed=seed if seed is not None else top.integer("seed", 0, default=0),
            val_fraction=sec.number("val_fraction", 0.0, 1.0, high_open=True, default=0.25),
            density=density if density is not None else sec.positive("density", default=1.0),
            sweeps_before=sec.integer("sweeps_before", 0, default=10),
            occupancy=sec.flag("occupancy", default=True),
            waymo_label_every=sec.integer("label_every", 1, default=5),
            zlib_level=sec.integer("zlib_level", 0, default=1),
            workers=workers if workers is not None else top.integer("workers", 1, default=1),
            version=sec.text("version", default="v1.0-mini"),
        )
        what = pool if pool is not None else sec  # the pool inherits everything but its size and root from the dataset's
        cfg = replace(labelled, scenes=scenes if scenes is not None else what.integer("scenes", 1))
        out = out if out is not None else Path(what.text("out"))
    except ParamsError as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    if pretrain:  # the nuScenes pool's names stay clear of the labelled dataset's (params: synth.<dataset>)
        generate = (partial(generate_nuscenes_pretrain, labelled=labelled) if dataset is Dataset.nuscenes
                    else generate_waymo_pretrain)
    else:
        generate = generate_nuscenes if dataset is Dataset.nuscenes else generate_waymo
    label = f"synth {dataset.value}" + (" pretrain" if pretrain else "")
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task("scenes", total=cfg.scenes)
        try:
            summary = generate(cfg, out, force=force, progress=lambda done, total: bar.update(task, completed=done))
        except SynthError as exc:
            err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None
    Console().print(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in summary.items()), soft_wrap=True)
