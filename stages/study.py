"""`gpicture study`: the label-efficiency study's tables and figures from the pipeline's metrics."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from gpicture.params import ParamsError, load_section
from gpicture.study import StudySpec, markdown_report, study_gains, write_report
from gpicture.viz.curves import plot_curves


def study(
    metrics: Path = typer.Option(Path("metrics/study"), help="The study runs' metrics: <task>/<init>/<fraction>-s<seed>.json."),
    runs: Path | None = typer.Option(None, help="The study runs' folders (<task>/<init>/<fraction>-s<seed>/dvclive): "
                                                "their learning curves go to <out>/study-curves.png."),
    out: Path = typer.Option(Path("reports"), help="Where study.md and study.png go."),
    curves: list[Path] = typer.Option([], help="dvclive folders whose training curves to plot as well "
                                               "(<out>/curves-<parent folder>.png)."),
    params: Path = typer.Option(Path("params.yaml"), help="The params file (section study: the planned runs)."),
) -> None:
    """Tabulate and plot the study (params study: tasks x inits x label fractions x seeds): mean ± spread per
    cell, the gains over scratch and over the ablation without teacher targets, missing runs named."""
    err = Console(stderr=True)
    try:
        spec = StudySpec.from_params(load_section(params, "study"))
        cells = write_report(metrics, out, spec, runs)
        for folder in curves:
            plot_curves(folder, out / f"curves-{folder.parent.name}.png")
    except (ParamsError, KeyError, ValueError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    Console().print(markdown_report(spec, cells, study_gains(cells)), soft_wrap=True)
    Console().print(f"wrote {out / 'study.md'} and {out / 'study.png'}"
                    + (f" and {out / 'study-curves.png'}" if runs is not None else ""))
