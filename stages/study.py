"""`gpicture study`: the pre-training study's table and figure from the pipeline's metrics."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from gpicture.params import ParamsError, load_section


def study(
    metrics: Path = typer.Option(Path("metrics"), help="The metrics folder the evaluate and study stages wrote."),
    out: Path = typer.Option(Path("reports"), help="Where study.md and study.png go."),
    curves: list[Path] = typer.Option([], help="dvclive folders whose training curves to plot as well "
                                               "(<out>/curves-<parent folder>.png)."),
    params: Path = typer.Option(Path("params.yaml"), help="The params file."),
) -> None:
    """Tabulate and plot every study run (GPICTURE / scratch / no teacher targets x label fraction)."""
    from gpicture.study import markdown_table, write_report

    err = Console(stderr=True)
    try:
        sec = load_section(params, "study")
        rows = write_report(metrics, out, str(sec["dataset"]), dict(sec["metrics"]))
        from gpicture.viz.curves import plot_curves

        for folder in curves:
            plot_curves(folder, out / f"curves-{folder.parent.name}.png")
    except (ParamsError, KeyError, ValueError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    Console().print(markdown_table(rows), soft_wrap=True)
    Console().print(f"wrote {out / 'study.md'} and {out / 'study.png'}")
