"""`gpicture doctor`: check every dependency with a live operation, and the environment against its lock."""

from __future__ import annotations

import time

import typer
from rich.console import Console
from rich.table import Table

from gpicture.doctor import lock_report, nvcc_version, run_checks


def doctor(
    full: bool = typer.Option(False, "--full", help="Run every live check again, even those that passed in this "
                                                    "same environment (unchanged packages) before."),
) -> None:
    """Check Python, torch, spconv, MinkowskiEngine, torch-scatter, zarr, numcodecs,
    dvc, nuscenes-devkit, the Waymo protos and the native ops, each with a real tiny
    operation, and the installed versions against the committed lock. Exits 1, naming what
    is broken, if a required check fails; a drift from the lock is flagged (exit 0)."""
    t0 = time.perf_counter()
    console = Console()
    results = run_checks(full=full)
    table = Table(title="gpicture doctor")
    for col in ("dependency", "version", "status", "live check"):
        table.add_column(col)
    for r in results:
        status = "[green]ok[/green]" if r.ok else ("[red]FAIL[/red]" if r.required else "[yellow]warn[/yellow]")
        table.add_row(r.name, r.version, status, r.detail if r.cached else f"{r.detail} ({r.seconds * 1000:.0f} ms)")
    console.print(table)
    lock = lock_report()
    if lock.lock is None:
        console.print("[yellow]no lock file in this checkout: versions not compared[/yellow]")
    else:
        versions = Table(title=f"locked ({lock.lock.name}) and installed versions")
        for col in ("package", "locked", "installed", ""):
            versions.add_column(col)
        shown = {name for name, _, _ in lock.key}
        rows = lock.key + [(n, want, have) for n, (want, have) in sorted(lock.drift.items()) if n not in shown]
        for name, want, have in rows:
            mark = ("[green]=[/green]" if want is None or (have or "").split("+")[0] == want.split("+")[0]
                    else "[red]DRIFT[/red]")
            versions.add_row(name, want or ("(this checkout)" if name == "gpicture" else "(not in the lock)"),
                             have or "-", mark)
        console.print(versions)
        if lock.drift:
            console.print(f"[red]drift: {len(lock.drift)} of {lock.locked} locked packages differ from the lock "
                          f"({', '.join(sorted(lock.drift))}); `make setup` installs the locked versions[/red]",
                          soft_wrap=True)
        else:
            console.print(f"[green]all {lock.locked} locked packages installed at their locked versions[/green]")
    nvcc = nvcc_version()
    console.print(f"nvcc: {nvcc or 'not found'}")
    broken = [r.name for r in results if r.required and not r.ok]
    if broken:
        console.print(f"[red]broken: {', '.join(broken)}[/red]")
        raise typer.Exit(code=1)
    console.print(f"[green]all dependencies work[/green] ({time.perf_counter() - t0:.1f} s)")
