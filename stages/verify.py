"""`gpicture verify STORE`: check a voxel or teacher store fully (every chunk present, every
checksum good, row counts consistent); exit non-zero with the first fault."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from gpicture.atomic import output_kind
from gpicture.data.store import FORMAT, StoreError, VoxelStore
from gpicture.teacher.cache import TEACHER_FORMAT, TeacherStore


def verify(
    store: Path = typer.Argument(..., help="A voxel store (data/zarr/<dataset>/<split>.zarr) or a teacher store "
                                           "(data/teacher/<dataset>/<split>.zarr)."),
) -> None:
    """Check a store fully: every chunk file present and decoded, its CRC32C checksum matched, the
    row counts consistent with the pointers and attributes. Exit 0 when whole, 2 at the first fault."""
    err = Console(stderr=True)
    try:
        match output_kind(store):
            case k if k == FORMAT:
                report = VoxelStore.open(store, allow_empty=True).verify()
            case k if k == TEACHER_FORMAT:
                report = TeacherStore.open(store).verify()
            case other:
                what = f"a {other}" if other else "no gpicture store format attribute"
                raise StoreError(f"{store}: not a voxel or teacher store ({what})")
    except (ValueError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    Console().print("\n".join(report.lines()), soft_wrap=True, highlight=False)
