"""`gpicture convert` and `gpicture merge`: raw splits into Zarr voxel stores."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from gpicture.data.convert import ConvertConfig, convert as convert_split, merge_stores, parse_shard
from gpicture.data.finite import NonFinitePolicy
from gpicture.data.voxelize import VoxelGrid
from gpicture.params import ParamsError, check_voxel_size, load_section


class Dataset(str, Enum):
    nuscenes = "nuscenes"
    waymo = "waymo"


class PointsPolicy(str, Enum):
    drop = "drop"
    error = "error"


class EmptySegments(str, Enum):
    error = "error"
    skip = "skip"


def _progress(label: str, console: Console) -> Progress:
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=True)


def _fail(err: Console, exc: Exception) -> None:
    err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
    raise typer.Exit(2) from None


def convert(
    dataset: Dataset = typer.Argument(..., help="Raw dataset format."),
    split: str = typer.Option(..., help="Split: a pipeline name from params (pretrain, train, val) or the dataset's "
                                        "own (mini_train, val, training, validation, ...)."),
    out: Path = typer.Option(..., help="Store to write (<dataset>/<split>.zarr)."),
    root: Path | None = typer.Option(None, help="Raw data root (params: convert.<dataset>.root)."),
    version: str | None = typer.Option(None, help="nuScenes version folder under the root, e.g. v1.0-trainval "
                                                  "(params: convert.nuscenes.version)."),
    sweeps: int | None = typer.Option(None, help="nuScenes LIDAR_TOP sweeps per frame, keyframe included."),
    workers: int | None = typer.Option(None, help="Parallel reader processes (params: convert.workers)."),
    shard: str = typer.Option("0/1", help="Convert only block i of n (i/n); join the shards with `gpicture merge`."),
    skip_empty_frames: bool | None = typer.Option(
        None, "--skip-empty-frames/--no-skip-empty-frames",
        help="Skip frames without LiDAR returns (stripped or camera-only records), counted in the log and the store "
             "attrs, instead of stopping (params: convert.skip_empty_frames). A store left with no frame is refused "
             "by every later stage."),
    labels: bool | None = typer.Option(
        None, "--labels/--no-labels",
        help="Read and store the annotations; --no-labels writes an unlabelled store (no box, point label or "
             "occupancy array; none is read from the source). Params: the split's `labels` in "
             "convert.<dataset>.splits (pretrain: labels false)."),
    nonfinite_points: PointsPolicy | None = typer.Option(
        None, help="Points with a NaN / inf coordinate or feature: drop them (counted in the log and the store attrs) "
                   "or stop with an error naming the file (params: convert.nonfinite.points). Non-finite labels, "
                   "boxes and poses always stop (convert.nonfinite)."),
    empty_segments: EmptySegments | None = typer.Option(
        None, help="A 0-byte Waymo segment: stop naming it, or skip it (counted in the log and the store attrs) "
                   "(params: convert.empty_segments)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing voxel store at --out (anything else "
                                                    "there is refused, never deleted)."),
    params: Path = typer.Option(Path("params.yaml"), help="The params file."),
) -> None:
    """Convert a raw nuScenes / Waymo split into a chunked Zarr voxel store."""
    err = Console(stderr=True)
    try:
        top = load_section(params, "convert")
        profile = str(load_section(params, "model").get("profile", "small"))
        over = (top.get("profiles") or {}).get(profile, {}).get(dataset.value) or {}
        sec = {**load_section(params, "convert", dataset.value), **over}
        size_key = f"convert.{'profiles.' + profile + '.' if 'voxel_size' in over else ''}{dataset.value}.voxel_size"
        params_version = str(sec.get("version", "v1.0-mini"))
        # The params' pipeline split names (train, val -> mini_train, mini_val) belong to the params'
        # version; another version (--version v1.0-trainval) takes the devkit's own names as they are.
        names = sec.get("splits", {}) if version in (None, params_version) else {}
        # A pipeline split is the dataset's split name, or {split, root, version, labels}: a split
        # of its own raw root (pretrain: the unlabelled pool) and whether its annotations are read.
        entry = names.get(split, split)
        entry = entry if isinstance(entry, dict) else {"split": entry}
        version = version or str(entry.get("version", params_version))
        cfg = ConvertConfig(
            dataset=dataset.value,
            root=root if root is not None else Path(entry.get("root", sec["root"])),
            split=str(entry.get("split", split)),
            grid=VoxelGrid(tuple(sec["point_cloud_range"]), check_voxel_size(sec["voxel_size"], f"{params}: {size_key}")),
            sweeps=sweeps if sweeps is not None else int(sec.get("sweeps", 1)),
            version=version,
            workers=workers if workers is not None else int(top.get("workers", 1)),
            shard=parse_shard(shard),
            skip_empty_frames=(skip_empty_frames if skip_empty_frames is not None
                               else bool(top.get("skip_empty_frames", False))),
            labels=labels if labels is not None else bool(entry.get("labels", True)),
            nonfinite=NonFinitePolicy.from_params({**(top.get("nonfinite") or {}),
                                                   **({"points": nonfinite_points.value} if nonfinite_points else {})}),
            empty_segments=(empty_segments.value if empty_segments is not None
                            else str(top.get("empty_segments", "error"))),
        )
    except (ParamsError, ValueError, KeyError) as exc:
        _fail(err, exc)
    with _progress(f"convert {dataset.value} {cfg.split}" + ("" if cfg.labels else " (unlabelled)"), err) as bar:
        task = bar.add_task("frames", total=None)
        try:
            summary = convert_split(cfg, out, force=force,
                                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                                    log=lambda note: err.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True))
        except (OSError, ValueError) as exc:  # missing files, corrupt records, bad frames, existing output
            _fail(err, exc)
    Console().print(f"wrote {out}: " + ", ".join(f"{k} {v:,}" for k, v in summary.items()), soft_wrap=True)


def merge(
    shards: list[Path] = typer.Argument(..., help="Shard stores written by `convert --shard i/n`."),
    out: Path = typer.Option(..., help="The merged store."),
    force: bool = typer.Option(False, "--force", help="Replace an existing voxel store at --out (anything else "
                                                    "there is refused, never deleted)."),
) -> None:
    """Join the shard stores of one split into one store."""
    err = Console(stderr=True)
    with _progress("merge", err) as bar:
        task = bar.add_task("frames", total=None)
        try:
            summary = merge_stores(shards, out, force=force,
                                   progress=lambda done, total: bar.update(task, completed=done, total=total))
        except (OSError, ValueError) as exc:
            _fail(err, exc)
    Console().print(f"wrote {out}: " + ", ".join(f"{k} {v:,}" for k, v in summary.items()), soft_wrap=True)
