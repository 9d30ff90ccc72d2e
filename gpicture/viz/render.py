"""Pictures of frames: which views apply, where they go, one frame or a whole split in parallel.

Views (:data:`VIEWS`): ``bev`` always; ``mask`` and ``teacher`` need a teacher store computed from
the same store; ``occupancy`` needs the frame's occupancy ground truth (nuScenes-Occupancy rows,
or Waymo segmentation labels); ``range`` is for Waymo stores. ``all`` renders every view that
applies to the frame; naming a view that does not apply is an error that says why.

Output names (one PNG per view):

- ``out=FILE.png``, one frame: a single view writes FILE.png; several write FILE-<view>.png;
- ``out_dir=DIR``, one frame: DIR/<view>.png;
- ``out_dir=DIR``, several frames: DIR/<frame>/<view>.png, ``<frame>`` the frame id made
  file-system safe (``/`` and other unsafe characters -> ``_``).

Everything that can be refused (unknown frame, a teacher store of another source store, a
predictions file for other frames, a view that does not apply) is checked before the first
picture is written, and raised as one ValueError naming the file.
"""

from __future__ import annotations

import functools
import multiprocessing
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gpicture.data.occupancy_targets import (
    OPENOCCUPANCY_GRID,
    OccupancyGridSpec,
    frame_ground_truth,
    frame_truth,
)
from gpicture.data.spec import (
    UNLABELLED,
    DatasetSpec,
    DetectionFormat,
    OccupancyTruth,
    dataset_spec,
)
from gpicture.data.store import StoreFrame, VoxelStore
from gpicture.viz import inputs
from gpicture.viz.canvas import Picture
from gpicture.viz.palette import semantic_palette
from gpicture.viz.range_view import render_range
from gpicture.viz.views import (
    StoreGrid,
    render_bev,
    render_mask,
    render_occupancy,
    render_teacher,
)

if TYPE_CHECKING:
    from gpicture.training.pretrain import MaskConfig

VIEWS = ("bev", "mask", "teacher", "occupancy", "range")


@dataclass(frozen=True)
class ShowConfig:
    """How pictures are drawn (the ``show`` command's options; mask settings from ``pretrain.mask``)."""

    mask: MaskConfig | None = None  # None: pre-training's defaults (left unset, workers need not import torch)
    mask_seed: int = 0  # train.seed whose masks to show
    mask_epoch: int = 0
    occupancy_grid: OccupancyGridSpec | None = None  # truth-only Waymo pictures (None: the store's grid)
    color_by: str = "auto"  # auto | height | intensity | label
    score_threshold: float = 0.3  # predicted boxes below it are not drawn
    size: int = 800  # pixels per BEV panel side


def safe_name(frame_id: str) -> str:
    """A frame id as a file or folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", frame_id)


def output_paths(views: Sequence[str], frame_id: str, out: Path | None, out_dir: Path | None,
                 several_frames: bool) -> dict[str, Path]:
    """Where each view of a frame is written (module docstring)."""
    if (out is None) == (out_dir is None):
        raise ValueError("give exactly one of --out FILE.png and --out-dir DIR")
    if out is not None:
        if several_frames:
            raise ValueError("--out names one picture; use --out-dir with --all")
        out = Path(out)
        if out.suffix.lower() != ".png":
            raise ValueError(f"{out}: --out must name a .png file")
        if len(views) == 1:
            return {views[0]: out}
        return {v: out.with_name(f"{out.stem}-{v}.png") for v in views}
    base = Path(out_dir) / safe_name(frame_id) if several_frames else Path(out_dir)
    return {v: base / f"{v}.png" for v in views}


@dataclass
class Sources:
    """The inputs of a ``show`` run, opened and checked once."""

    store: VoxelStore
    teacher: Path | None = None
    predictions: Path | None = None

    @classmethod
    def open(cls, store: Path, teacher: Path | None = None, predictions: Path | None = None) -> Sources:
        """Open the store and check the teacher store and predictions against it (ValueError)."""
        src = VoxelStore.open(store)
        if teacher is not None:
            inputs.open_teacher(teacher, src)
        if predictions is not None:
            predictions = Path(predictions)
            if not predictions.exists():
                raise ValueError(f"{predictions}: no such predictions file or folder")
            if inputs.is_occupancy_predictions(predictions):
                inputs.occupancy_frames(predictions, src)
            else:
                inputs.check_detection_frames(predictions, src)
        return cls(src, None if teacher is None else Path(teacher), predictions)

    @property
    def dataset(self) -> str:
        return str(self.store.attrs["dataset"])

    @property
    def spec(self) -> DatasetSpec:
        return dataset_spec(self.dataset)

    @functools.cached_property
    def teacher_store(self):
        return None if self.teacher is None else inputs.open_teacher(self.teacher, self.store)

    @property
    def occupancy_predictions(self) -> Path | None:
        p = self.predictions
        return p if p is not None and inputs.is_occupancy_predictions(p) else None

    @property
    def detection_predictions(self) -> Path | None:
        p = self.predictions
        return p if p is not None and not inputs.is_occupancy_predictions(p) else None


def _has_occupancy(frame: StoreFrame, spec: DatasetSpec) -> bool:
    if frame_truth(frame, spec) is OccupancyTruth.OCCUPANCY_ROWS:
        occ = frame.occupancy
        return occ is not None and len(occ) > 0
    return frame.seg_labels is not None and bool((frame.seg_labels != UNLABELLED).any())


def why_not(view: str, src: Sources, frame: StoreFrame) -> str | None:
    """None if ``view`` applies to ``frame``, else the reason."""
    if view not in VIEWS:
        return f"unknown view {view!r} (one of all, {', '.join(VIEWS)})"
    if view in ("mask", "teacher") and src.teacher is None:
        return f"the {view} view needs --teacher TEACHER_STORE"
    if view == "occupancy" and not _has_occupancy(frame, src.spec):
        return f"frame {frame.frame_id} of {src.store.path} has no occupancy ground truth"
    if view == "range" and not src.spec.has_range_images:
        return f"the range view is for Waymo stores; {src.store.path} is {src.dataset}"
    return None


def frame_views(view: str, src: Sources, frame: StoreFrame) -> list[str]:
    """The views to render: every applicable one for ``all``, else ``[view]`` (ValueError if it
    does not apply)."""
    if view == "all":
        return [v for v in VIEWS if why_not(v, src, frame) is None]
    reason = why_not(view, src, frame)
    if reason is not None:
        raise ValueError(reason)
    return [view]


def _occupancy_inputs(src: Sources, frame: StoreFrame, cfg: ShowConfig
                      ) -> tuple[np.ndarray, OccupancyGridSpec, np.ndarray | None, list[str]]:
    names = src.spec.occupancy_classes(src.store.attrs["classes"])
    if src.occupancy_predictions is not None:
        pred = inputs.frame_occupancy(src.occupancy_predictions, src.store, frame.index, len(names))
        truth = frame_ground_truth(frame, src.spec, pred.grid)
        return truth, pred.grid, pred.rows, names
    if frame_truth(frame, src.spec) is OccupancyTruth.OCCUPANCY_ROWS:  # the finest truth there is: the 0.2 m rows
        return np.asarray(frame.occupancy, np.int64), OPENOCCUPANCY_GRID, None, names
    grid = cfg.occupancy_grid
    if grid is None:
        g = StoreGrid.from_attrs(src.store.attrs)
        grid = OccupancyGridSpec(g.point_cloud_range, g.voxel_size)  # type: ignore[arg-type]
    return frame_ground_truth(frame, src.spec, grid), grid, None, names


def render_frame(src: Sources, index: int, views: Sequence[str], cfg: ShowConfig) -> dict[str, Picture]:
    """Render ``views`` (already checked by :func:`frame_views`) of frame ``index``."""
    frame = src.store[index]
    dataset = src.dataset
    grid = StoreGrid.from_attrs(src.store.attrs)
    palette = semantic_palette(dataset, src.store.attrs)
    out: dict[str, Picture] = {}
    teacher = None
    if any(v in ("mask", "teacher") for v in views):
        teacher = src.teacher_store.frame(index)
    for view in views:
        match view:
            case "bev":
                det = None
                if src.detection_predictions is not None:
                    det = inputs.frame_detections(src.detection_predictions, src.store, index)
                out[view] = render_bev(frame, dataset, grid, palette, cfg.color_by, det, cfg.score_threshold, cfg.size)
            case "mask":
                from gpicture.training.pretrain import MaskConfig  # lazy: torch only for the mask view

                m = inputs.frame_mask(teacher[0], teacher[1], index, cfg.mask or MaskConfig(), cfg.mask_seed,
                                      cfg.mask_epoch)
                out[view] = render_mask(frame, dataset, grid, m, cfg.mask_seed, cfg.mask_epoch, cfg.size)
            case "teacher":
                out[view] = render_teacher(frame, dataset, grid, palette, teacher[0], teacher[1], cfg.size)
            case "occupancy":
                truth, ogrid, pred, names = _occupancy_inputs(src, frame, cfg)
                if truth is None:
                    raise ValueError(f"frame {frame.frame_id} of {src.store.path} has no occupancy ground truth")
                out[view] = render_occupancy(frame, dataset, truth, ogrid, pred, names, cfg.size)
            case "range":
                out[view] = render_range(frame, palette)
            case _:
                raise ValueError(f"unknown view {view!r}")
    return out


def _plan(src: Sources, frames: Sequence[str | int], view: str, out: Path | None, out_dir: Path | None,
          several: bool) -> list[tuple[int, dict[str, Path]]]:
    plan = []
    for f in frames:
        i = inputs.resolve_frame(src.store, f)
        fr = src.store[i]
        names = frame_views(view, src, fr)
        if (src.detection_predictions is not None and "bev" in names
                and src.spec.detection_format is DetectionFormat.NUSCENES_SUBMISSION):
            inputs.frame_detections(src.detection_predictions, src.store, i)  # every sample needs an entry
        if src.occupancy_predictions is not None and "occupancy" in names:
            _, by_frame = inputs.occupancy_frames(src.occupancy_predictions, src.store)
            if fr.frame_id not in by_frame:
                raise ValueError(f"{src.occupancy_predictions}: no prediction for frame {fr.frame_id!r} "
                                 f"of {src.store.path}")
        plan.append((i, output_paths(names, fr.frame_id, out, out_dir, several)))
    return plan


@functools.lru_cache(maxsize=1)
def _worker_sources(store: Path, teacher: Path | None, predictions: Path | None) -> Sources:
    return Sources.open(store, teacher, predictions)


def _render_and_save(store: Path, teacher: Path | None, predictions: Path | None, index: int,
                     paths: dict[str, Path], cfg: ShowConfig) -> list[Path]:
    """Worker: render one frame's views and write them (atomically, one file at a time)."""
    if "mask" in paths:
        import torch

        torch.set_num_threads(1)  # parallel over frames, not inside k-means
    src = _worker_sources(store, teacher, predictions)
    pictures = render_frame(src, index, list(paths), cfg)
    written = [pictures[v].save(p) for v, p in paths.items()]
    for pic in pictures.values():
        pic.figure.clear()
    return written


def show(store: Path, frames: Sequence[str | int], view: str = "all", out: Path | None = None,
         out_dir: Path | None = None, teacher: Path | None = None, predictions: Path | None = None,
         cfg: ShowConfig | None = None, workers: int = 1, split: bool = False,
         progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Render ``view`` (a name of :data:`VIEWS` or ``all``) of ``frames`` (ids or indices) of the
    store and write PNGs (module docstring for the names); ``workers`` > 1 renders frames in that
    many processes; ``split`` (``--all``) names files per frame even for a one-frame store.
    Returns the written paths in frame order."""
    cfg = cfg or ShowConfig()
    if not frames:
        raise ValueError("no frames to show")
    src = Sources.open(store, teacher, predictions)
    plan = _plan(src, frames, view, out, out_dir, split or len(frames) > 1)
    args = [(Path(store), None if teacher is None else Path(teacher),
             None if predictions is None else Path(predictions), i, paths, cfg) for i, paths in plan]
    written: list[Path] = []
    if workers <= 1 or len(plan) == 1:
        for k, a in enumerate(args):
            written += _render_and_save(*a)
            if progress:
                progress(k + 1, len(args))
        return written
    ctx = multiprocessing.get_context("spawn")  # torch and fork do not mix
    with ProcessPoolExecutor(max_workers=min(workers, len(plan)), mp_context=ctx) as pool:
        futures = [pool.submit(_render_and_save, *a) for a in args]
        for k, fut in enumerate(futures):
            written += fut.result()
            if progress:
                progress(k + 1, len(args))
    return written
