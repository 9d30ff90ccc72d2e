"""Raw nuScenes / Waymo splits into voxel stores (``gpicture convert``).

Frames are read and voxelized in parallel worker processes, appended in source
order, and the store is moved into place only when complete. ``shard=(i, n)``
converts the i-th of n contiguous blocks of frames, so a large split can be spread
over machines and the shards joined with :func:`merge_stores`.

``labels=False`` converts an *unlabelled* split (the ``pretrain`` split): the readers read no
annotation (boxes, lidarseg, segmentation labels, occupancy), the store has no label array
and says so (attrs ``labels: false``), and the nuScenes source fingerprint leaves the
annotation tables out, so relabelling the source changes nothing in the store.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpicture.data.finite import DEFAULT_POLICY, NonFinitePolicy
from gpicture.data.frame import EmptyFrameError, RawFrame
from gpicture.data.schema import FIELDS
from gpicture.data.spec import DATASETS, NUSCENES, WAYMO, dataset_spec
from gpicture.data.store import StoreError, VoxelStore
from gpicture.data.store_writer import EncodedFrame, StoreWriter
from gpicture.data.voxelize import VoxelGrid
from gpicture.workers import pool_map


@dataclass(frozen=True)
class ConvertConfig:
    """What to convert and how (built once from the ``convert`` section of params.yaml)."""

    dataset: str  # a name of gpicture.data.spec.DATASETS
    root: Path
    split: str  # the dataset's own split name: mini_train, val, ... / training, validation
    grid: VoxelGrid
    sweeps: int = 10  # nuScenes: LIDAR_TOP sweeps per frame, keyframe included
    version: str = "v1.0-mini"  # nuScenes
    workers: int = 1
    shard: tuple[int, int] = (0, 1)  # (index, count)
    skip_empty_frames: bool = False  # skip (and count) frames without LiDAR returns instead of stopping
    labels: bool = True  # False: an unlabelled split, no annotation read or stored (the module docstring)
    nonfinite: NonFinitePolicy = DEFAULT_POLICY  # what the readers do with NaN / inf (convert.nonfinite)
    empty_segments: str = "error"  # Waymo 0-byte segments: error, or skip (counted in the log and attrs)

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r} ({' or '.join(DATASETS)})")
        if self.sweeps < 1:
            raise ValueError(f"sweeps must be >= 1, got {self.sweeps}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        i, n = self.shard
        if not (n >= 1 and 0 <= i < n):
            raise ValueError(f"shard must be i/n with 0 <= i < n, got {i}/{n}")
        self.nonfinite.validate()
        if self.empty_segments not in ("error", "skip"):
            raise ValueError(f"convert.empty_segments: {self.empty_segments!r} is not one of: error, skip")
        self.grid.validate()


def parse_shard(text: str) -> tuple[int, int]:
    """'2/8' -> (2, 8)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return i, n


def encode_frame(frame: RawFrame, grid: VoxelGrid) -> EncodedFrame:
    """Voxelize a reader's frame on the canonical grid."""
    coords, point_voxel = grid.voxelize(frame.points)
    return EncodedFrame(**_fields(frame, derived=False), voxel_coords=coords, point_voxel=point_voxel,
                        dropped_nonfinite=int(frame.extra.get("dropped_nonfinite", 0)),
                        sweeps_read=int(frame.extra.get("sweeps_read", 1)))


def _fields(frame: Any, derived: bool = True) -> dict[str, Any]:
    """The schema's fields of a frame (those the readers fill only, without ``derived``)."""
    return {f.name: getattr(frame, f.name) for f in FIELDS if derived or not f.derived}


# -- sources ----------------------------------------------------------------------------------
# The readers are imported where they are used (`# lazy:`): they load the nuScenes devkit or the
# Waymo protos, which `gpicture convert` of the other dataset (and the CLI's start) does without.

_WORKER: dict[str, Any] = {}
# The nuScenes tables that hold annotations (an unlabelled split's fingerprint leaves them out).
NUSCENES_ANNOTATION_TABLES = ("sample_annotation", "instance", "category", "attribute", "visibility",
                              "lidarseg", "panoptic")


def _init_nuscenes_worker(root: str, version: str) -> None:
    from gpicture.data.nuscenes_reader import open_nuscenes  # lazy: the nuScenes devkit

    _WORKER["nusc"] = open_nuscenes(Path(root), version)


def _load_nuscenes(args: tuple[str, int, VoxelGrid, bool, NonFinitePolicy]) -> EncodedFrame:
    from gpicture.data.nuscenes_reader import read_sample  # lazy: the nuScenes devkit

    token, sweeps, grid, labels, nonfinite = args
    return encode_frame(read_sample(_WORKER["nusc"], token, sweeps, labels=labels, nonfinite=nonfinite), grid)


def _load_waymo(args: tuple[str, int, VoxelGrid, bool, NonFinitePolicy]) -> EncodedFrame:
    from gpicture.data.waymo.reader import read_frame  # lazy: the Waymo protos

    path, index, grid, labels, nonfinite = args
    return encode_frame(read_frame(Path(path), index, labels=labels, nonfinite=nonfinite), grid)


@dataclass(frozen=True)
class Skipped:
    """A source frame skipped by ``skip_empty_frames`` (what the reader said about it)."""

    reason: str


def _load_or_skip(loader: Callable[[Any], EncodedFrame], skip_empty: bool, ref: Any) -> EncodedFrame | Skipped:
    """``loader(ref)``; with ``skip_empty``, an ``EmptyFrameError`` becomes a ``Skipped``."""
    try:
        return loader(ref)
    except EmptyFrameError as exc:
        if not skip_empty:
            raise
        return Skipped(str(exc))


def _file_digest(path: Path, h: Any, head: int = 1 << 20) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        h.update(f.read(head))
        if size > 2 * head:
            f.seek(size - head)
            h.update(f.read(head))


def _plan(cfg: ConvertConfig) -> tuple[list, Callable, Callable | None, tuple, dict[str, Any]]:
    """Frame references, the loader, the worker initializer and the store attributes."""
    h = hashlib.sha256()
    spec = dataset_spec(cfg.dataset)
    if spec is NUSCENES:
        from gpicture.data.nuscenes_reader import (  # lazy: the nuScenes devkit
            open_nuscenes,
            split_sample_tokens,
        )

        nusc = open_nuscenes(cfg.root, cfg.version)
        tokens = split_sample_tokens(nusc, cfg.split)
        for table in sorted((cfg.root / cfg.version).glob("*.json")):
            if cfg.labels or table.stem not in NUSCENES_ANNOTATION_TABLES:
                _file_digest(table, h, head=1 << 30)
        refs = [(t, cfg.sweeps, cfg.grid, cfg.labels, cfg.nonfinite) for t in tokens]
        attrs = {"classes": list(spec.raw_classes), "version": cfg.version, "sweeps": cfg.sweeps,
                 "sweeps_between_keyframes": any(not sd["is_key_frame"] for sd in nusc.sample_data
                                                 if sd["channel"] == "LIDAR_TOP")}
        init, init_args = _init_nuscenes_worker, (str(cfg.root), cfg.version)
        _WORKER["nusc"] = nusc  # the serial path uses the same object
        loader = _load_nuscenes
    elif spec is WAYMO:
        from gpicture.data.waymo.reader import (  # lazy: the Waymo protos
            frame_refs,
            segment_files,
            usable_segments,
        )

        # Empty segments: refused or skipped by policy; a segment given twice: refused.
        files, empty = usable_segments(segment_files(cfg.root, cfg.split), cfg.empty_segments)
        for f in files:
            _file_digest(f, h)
        refs = [(str(p), i, cfg.grid, cfg.labels, cfg.nonfinite) for p, i in frame_refs(files)]
        attrs = {"classes": list(spec.raw_classes), "sweeps": 1, "skipped_segments": len(empty),
                 "skipped_segment_files": [f.name for f in empty]}
        init, init_args = None, ()
        loader = _load_waymo
    else:
        raise ValueError(f"dataset {spec.name!r}: no reader")
    attrs.update({
        "dataset": cfg.dataset, "split": cfg.split, "labels": cfg.labels, "source_root": str(cfg.root),
        "point_cloud_range": list(cfg.grid.point_cloud_range), "voxel_size": list(cfg.grid.voxel_size),
        "grid_shape_zyx": list(cfg.grid.shape_zyx), "source_fingerprint": h.hexdigest(),
        "frames_in_source": len(refs), "box_classes": list(spec.box_types), "feature_names": list(spec.point_features),
        "nonfinite_policy": dataclasses.asdict(cfg.nonfinite),
    })
    i, n = cfg.shard
    lo, hi = i * len(refs) // n, (i + 1) * len(refs) // n
    attrs["shard"] = [i, n, lo, hi]
    return refs[lo:hi], loader, init, init_args, attrs


def _iter_frames(refs: list, loader: Callable, init: Callable | None, init_args: tuple,
                 workers: int) -> Iterator[EncodedFrame | Skipped]:
    # Workers that end with the generator, terminated on Ctrl-C / SIGTERM / a bad frame (gpicture.workers).
    yield from pool_map(loader, refs, workers, init, init_args, chunksize=max(1, min(8, len(refs) // (4 * workers))))


def _sweeps_note(cfg: ConvertConfig, got: list[int], between_keyframes: bool) -> str:
    """What the multi-sweep accumulation really read (one log line)."""
    counts = ", ".join(f"{n} sweep{'s' if n > 1 else ''}: {k} frame{'s' if k > 1 else ''}"
                       for n, k in sorted(Counter(got).items()))
    note = f"{cfg.root}: asked {cfg.sweeps} LIDAR_TOP sweeps per frame; got {counts}"
    if not between_keyframes:
        note += (" (this dataset has no sweeps between keyframes: as from_file_multisweep does, the previous "
                 "sweeps read are the earlier keyframes along `prev`, 0.5 s apart)")
    elif min(got) < cfg.sweeps:
        note += " (fewer near the start of a scene, as from_file_multisweep)"
    return note


def convert(cfg: ConvertConfig, out: Path, force: bool = False,
            progress: Callable[[int, int], None] | None = None,
            log: Callable[[str], None] = logging.getLogger(__name__).warning) -> dict[str, Any]:
    """Convert a raw split (or one shard of it) into a voxel store at ``out``.

    ``log`` receives the notes a user must see: frames skipped by ``skip_empty_frames``
    (also counted in the store attrs ``skipped_frames``), empty Waymo segments skipped by
    ``empty_segments="skip"`` (attrs ``skipped_segments``), points dropped for NaN / inf values
    (attrs ``dropped_nonfinite_points``), and with ``sweeps > 1`` how many sweeps each frame
    really got (attrs ``sweeps_read``).
    """
    cfg.validate()
    refs, loader, init, init_args, attrs = _plan(cfg)
    if attrs.get("skipped_segments"):  # convert.empty_segments: skip (the attrs keep the count and names)
        log(f"{cfg.root}: skipped {attrs['skipped_segments']} empty (0-byte) Waymo segments: "
            f"{', '.join(attrs['skipped_segment_files'])} (convert.empty_segments: skip)")
    if not refs:
        raise StoreError(f"{cfg.root}: split {cfg.split!r} has no frames (shard {cfg.shard[0]}/{cfg.shard[1]})")
    load = functools.partial(_load_or_skip, loader, cfg.skip_empty_frames)
    skipped: list[str] = []
    sweeps_read: list[int] = []
    with StoreWriter(out, attrs, attrs["feature_names"], attrs["box_classes"], force=force, labels=cfg.labels,
                     log=log) as w:
        for k, frame in enumerate(_iter_frames(refs, load, init, init_args, cfg.workers)):
            if isinstance(frame, Skipped):
                skipped.append(frame.reason)
                log(f"skipped: {frame.reason}")
            else:
                w.append(frame)
                sweeps_read.append(frame.sweeps_read)
            if progress:
                progress(k + 1, len(refs))
        w.attrs["skipped_frames"] = len(skipped)
        if skipped:
            w.attrs["skipped_reason"] = "no LiDAR returns (convert --skip-empty-frames)"
            log(f"{cfg.root}: skipped {len(skipped)} of {len(refs)} frames without LiDAR returns"
                + ("; the store holds no frames and every later stage will refuse it" if not sweeps_read else ""))
        if sweeps_read:
            w.attrs["sweeps_read"] = {"min": min(sweeps_read), "max": max(sweeps_read),
                                      "mean": sum(sweeps_read) / len(sweeps_read)}
            if cfg.sweeps > 1:
                log(_sweeps_note(cfg, sweeps_read, bool(attrs.get("sweeps_between_keyframes", True))))
        w.commit(allow_empty=bool(skipped))
    if w.dropped_nonfinite:  # also in the store attrs, dropped_nonfinite_points
        log(f"{cfg.root}: dropped {w.dropped_nonfinite} points with a non-finite coordinate or feature "
            "(convert.nonfinite.points: drop; `error` refuses them)")
    written = VoxelStore.open(out, allow_empty=True).attrs
    return {"frames": written["n_frames"], "points": written["n_points"], "voxels": written["n_voxels"],
            "boxes": written["n_boxes"], "skipped_frames": len(skipped),
            "dropped_nonfinite_points": w.dropped_nonfinite}


def merge_stores(shards: list[Path], out: Path, force: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Join shard stores of one split (``convert --shard i/n``) into one store, in shard order."""
    stores = [VoxelStore.open(p, allow_empty=True) for p in shards]
    if not stores:
        raise StoreError("merge: no shard stores given")
    keys = ("dataset", "split", "point_cloud_range", "voxel_size", "source_fingerprint", "feature_names",
            "box_classes", "sweeps", "labels")
    ref = stores[0].attrs
    for s in stores[1:]:
        bad = [k for k in keys if s.attrs.get(k) != ref.get(k)]
        if bad:
            raise StoreError(f"{s.path}: differs from {stores[0].path} in {', '.join(bad)}: not shards of one split")
    stores.sort(key=lambda s: s.attrs["shard"][0])
    counts = [s.attrs["shard"][1] for s in stores]
    idx = [s.attrs["shard"][0] for s in stores]
    if len(set(counts)) != 1 or idx != list(range(counts[0])):
        raise StoreError(f"merge: shards {idx} of {counts[0]} given; need every shard 0..{counts[0] - 1} once")
    attrs = {k: v for k, v in ref.items() if k not in ("complete", "shard")}
    attrs["shard"] = [0, 1, 0, ref["frames_in_source"]]
    total = sum(len(s) for s in stores)
    attrs["skipped_frames"] = skipped = sum(int(s.attrs.get("skipped_frames", 0)) for s in stores)
    attrs.update({k: s.attrs[k] for s in stores for k in ("skipped_reason",) if k in s.attrs})
    read = [(len(s), s.attrs["sweeps_read"]) for s in stores if len(s) and "sweeps_read" in s.attrs]
    if read:
        attrs["sweeps_read"] = {"min": min(r["min"] for _, r in read), "max": max(r["max"] for _, r in read),
                                "mean": sum(n * r["mean"] for n, r in read) / sum(n for n, _ in read)}
    done = 0
    with StoreWriter(out, attrs, list(ref["feature_names"]), list(ref["box_classes"]), force=force,
                     labels=stores[0].labelled) as w:
        for s in stores:
            for i in range(len(s)):
                w.append(EncodedFrame(**_fields(s[i])))
                done += 1
                if progress:
                    progress(done, total)
        w.commit(allow_empty=skipped > 0)
    return {"frames": total, "shards": len(stores)}
