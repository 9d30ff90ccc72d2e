"""`gpicture synth`: procedural driving scenes written as real nuScenes / Waymo data."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gpicture.params import ParamsError, load_section
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
    try:
        top = load_section(params, "synth")
        sec = load_section(params, "synth", dataset.value)
        pool = load_section(params, "synth", "pretrain", dataset.value) if pretrain else {}
    except ParamsError as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    labelled = SynthConfig(
        scenes=int(sec["scenes"]),
        frames=frames if frames is not None else int(sec["frames"]),
        seed=seed if seed is not None else int(top.get("seed", 0)),
        val_fraction=float(sec.get("val_fraction", 0.25)),
        density=density if density is not None else float(sec.get("density", 1.0)),
        sweeps_before=int(sec.get("sweeps_before", 10)),
        occupancy=bool(sec.get("occupancy", True)),
        waymo_label_every=int(sec.get("label_every", 5)),
        zlib_level=int(sec.get("zlib_level", 1)),
        workers=workers if workers is not None else int(top.get("workers", 1)),
        version=str(sec.get("version", "v1.0-mini")),
    )
    what = pool if pretrain else sec  # the pool inherits everything but its size and root from the dataset's
    cfg = replace(labelled, scenes=scenes if scenes is not None else int(what["scenes"]))
    out = out if out is not None else Path(what["out"])
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
