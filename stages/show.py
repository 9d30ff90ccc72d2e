"""`gpicture show`: pictures of a frame (points and boxes, I²Mask, teacher features, occupancy,
range image), one PNG per view, for one frame or a whole split; or, with `--rerun FILE.rrd`, the
whole split as one Rerun recording to look at in 3D (`rerun FILE.rrd`)."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from gpicture.params import ParamsError, Section, load_section, model_profile, with_profile


class View(str, Enum):
    all = "all"
    bev = "bev"
    mask = "mask"
    teacher = "teacher"
    occupancy = "occupancy"
    range = "range"


class ColorBy(str, Enum):
    auto = "auto"
    height = "height"
    intensity = "intensity"
    label = "label"


def show(
    store: Path = typer.Argument(..., help="Voxel store of a split, e.g. data/zarr/nuscenes/val.zarr."),
    frame: str | None = typer.Option(None, help="Frame id, or index (negative from the end)."),
    all_frames: bool = typer.Option(False, "--all", help="Every frame of the store, in parallel (needs --out-dir)."),
    view: View = typer.Option(View.all, help="all: every view that applies to the frame, one PNG each."),
    teacher: Path | None = typer.Option(None, help="Teacher store of STORE (mask and teacher views)."),
    predictions: Path | None = typer.Option(None, help="Detection predictions (nuScenes submission JSON / Waymo "
                                                       "metrics_pb2.Objects) or an occupancy predictions folder."),
    mask_seed: int | None = typer.Option(None, help="train.seed whose I²Mask to show (default: pretrain.seed)."),
    mask_epoch: int = typer.Option(0, help="Pre-training epoch whose I²Mask to show."),
    color_by: ColorBy = typer.Option(ColorBy.auto, help="Point colours in the bev view (auto: label if labelled)."),
    score_threshold: float = typer.Option(0.3, help="Predicted boxes below this score are not drawn."),
    size: int = typer.Option(800, min=64, max=4096, help="Pixels per side of a bird's-eye-view panel."),
    out: Path | None = typer.Option(None, help="FILE.png (several views: FILE-<view>.png)."),
    out_dir: Path | None = typer.Option(None, help="DIR/<view>.png; with --all DIR/<frame>/<view>.png."),
    workers: int = typer.Option(0, help="Processes for --all (0: one per 16 frames, at most one per CPU core)."),
    params: Path = typer.Option(Path("params.yaml"), help="The params file (pretrain.mask, occupancy grid)."),
    rerun: Path | None = typer.Option(None, "--rerun", help="FILE.rrd: every frame of STORE (or --frame) as one "
                                                          "Rerun recording, opened with `rerun FILE.rrd` (needs "
                                                          "rerun-sdk); instead of PNGs."),
) -> None:
    """Render pictures of a frame: bird's-eye view with boxes, I²Mask, teacher features (PCA),
    occupancy, and (Waymo) a range image; or record a split for the Rerun viewer (--rerun)."""
    from gpicture.data.occupancy_targets import OccupancyGridSpec
    from gpicture.data.store import VoxelStore
    from gpicture.viz.render import ShowConfig
    from gpicture.viz.render import show as render_show

    err = Console(stderr=True)
    try:
        if rerun is not None and (out is not None or out_dir is not None or view is not View.all):
            raise ValueError("--rerun records every view of the frames in one file: leave out --out, --out-dir "
                             "and --view")
        if rerun is None and (frame is None) == (not all_frames):
            raise ValueError("give --frame ID|INDEX or --all")
        if rerun is not None and frame is not None and all_frames:
            raise ValueError("give --frame ID|INDEX or --all (the default with --rerun), not both")
        if all_frames and out_dir is None and rerun is None:
            raise ValueError("--all writes one folder per frame: give --out-dir DIR")
        src = VoxelStore.open(store)
        dataset = str(src.attrs["dataset"])
        pre = Section.load(params, "pretrain")
        mask = None  # built only when drawn: it imports torch, which bev-only workers can skip
        if view in (View.all, View.mask) and (rerun is None or teacher is not None):
            from gpicture.training.pretrain import MaskConfig

            mask = MaskConfig.from_section(pre.sub("mask"))
        occ = with_profile(load_section(params, "finetune", "occupancy"), model_profile(params, dataset)[0], dataset).get("grid", {})
        cfg = ShowConfig(mask=mask, mask_seed=pre.integer("seed", 0, default=0, override=mask_seed, option="--mask-seed"),
                         mask_epoch=mask_epoch,
                         occupancy_grid=OccupancyGridSpec.from_params(occ[dataset]) if dataset in occ else None,
                         color_by=color_by.value, score_threshold=score_threshold, size=size)
        if rerun is not None:
            summary = _record(store, rerun, None if frame is None else [frame], teacher, predictions, cfg, err)
            Console().print(f"wrote {summary.path}: {summary.frames} frame(s); entities "
                            + ", ".join(summary.entities), soft_wrap=True)
            return
        frames = list(range(len(src))) if all_frames else [frame]
        # A spawned worker costs seconds to start (imports, fonts): worth it from about 16 frames each.
        n_workers = workers if workers > 0 else max(1, min(os.cpu_count() or 1, len(frames) // 16))
        written = render_show(store, frames, view.value, out, out_dir, teacher, predictions, cfg,
                              workers=n_workers if all_frames else 1, split=all_frames)
    except (ParamsError, KeyError, OSError, ValueError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        err.print(f"[red]error:[/red] {msg}", soft_wrap=True)
        raise typer.Exit(2) from None
    shown = written if len(written) <= 8 else [*written[:6], "...", written[-1]]
    Console().print(f"wrote {len(written)} picture(s): " + ", ".join(str(p) for p in shown), soft_wrap=True)


def _record(store: Path, out: Path, frames: list[str] | None, teacher: Path | None, predictions: Path | None,
            cfg, err: Console):
    """`show --rerun`: write the recording with a progress bar (on stderr)."""
    from gpicture.viz.rerun_log import write_recording  # lazy: rerun-sdk only with --rerun

    with Progress(TextColumn(f"record {out.name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task("frames", total=None)
        return write_recording(store, out, frames, teacher, predictions, cfg,
                               progress=lambda done, total: bar.update(task, completed=done, total=total))
