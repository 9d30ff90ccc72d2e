"""`gpicture doctor`: check every dependency with a live operation."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from gpicture.doctor import nvcc_version, run_checks


def doctor() -> None:
    """Check Python, torch, spconv, MinkowskiEngine, torch-scatter, zarr, numcodecs,
    dvc, nuscenes-devkit, the Waymo protos and the native ops, each with a real tiny
    operation. Exits 1, naming what is broken, if a required check fails."""
    console = Console()
    results = run_checks()
    table = Table(title="gpicture doctor")
    for col in ("dependency", "version", "status", "live check"):
        table.add_column(col)
    for r in results:
        status = "[green]ok[/green]" if r.ok else ("[red]FAIL[/red]" if r.required else "[yellow]warn[/yellow]")
        table.add_row(r.name, r.version, status, f"{r.detail} ({r.seconds * 1000:.0f} ms)")
    console.print(table)
    nvcc = nvcc_version()
    console.print(f"nvcc: {nvcc or 'not found'}")
    broken = [r.name for r in results if r.required and not r.ok]
    if broken:
        console.print(f"[red]broken: {', '.join(broken)}[/red]")
        raise typer.Exit(code=1)
    console.print("[green]all dependencies work[/green]")
