"""Raw nuScenes / Waymo splits into voxel stores (``gpicture convert``).

Frames are read and voxelized in parallel worker processes, appended in source
order, and the store is moved into place only when complete. ``shard=(i, n)``
converts the i-th of n contiguous blocks of frames, so a large split can be spread
over machines and the shards joined with :func:`merge_stores`.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpicture.data.frame import RawFrame
from gpicture.data.schema import FIELDS
from gpicture.data.spec import DATASETS, NUSCENES, WAYMO, dataset_spec
from gpicture.data.store import EncodedFrame, StoreError, StoreWriter, VoxelStore
from gpicture.data.voxelize import VoxelGrid


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
                        dropped_nonfinite=int(frame.extra.get("dropped_nonfinite", 0)))


def _fields(frame: Any, derived: bool = True) -> dict[str, Any]:
    """The schema's fields of a frame (those the readers fill only, without ``derived``)."""
    return {f.name: getattr(frame, f.name) for f in FIELDS if derived or not f.derived}


# -- sources ----------------------------------------------------------------------------------
# The readers are imported where they are used (`# lazy:`): they load the nuScenes devkit or the
# Waymo protos, which `gpicture convert` of the other dataset (and the CLI's start) does without.

_WORKER: dict[str, Any] = {}


def _init_nuscenes_worker(root: str, version: str) -> None:
    from gpicture.data.nuscenes_reader import open_nuscenes  # lazy: the nuScenes devkit

    _WORKER["nusc"] = open_nuscenes(Path(root), version)


def _load_nuscenes(args: tuple[str, int, VoxelGrid]) -> EncodedFrame:
    from gpicture.data.nuscenes_reader import read_sample  # lazy: the nuScenes devkit

    token, sweeps, grid = args
    return encode_frame(read_sample(_WORKER["nusc"], token, sweeps), grid)


def _load_waymo(args: tuple[str, int, VoxelGrid]) -> EncodedFrame:
    from gpicture.data.waymo.reader import read_frame  # lazy: the Waymo protos

    path, index, grid = args
    return encode_frame(read_frame(Path(path), index), grid)


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
            _file_digest(table, h, head=1 << 30)
        refs = [(t, cfg.sweeps, cfg.grid) for t in tokens]
        attrs = {"classes": list(spec.raw_classes), "version": cfg.version, "sweeps": cfg.sweeps}
        init, init_args = _init_nuscenes_worker, (str(cfg.root), cfg.version)
        _WORKER["nusc"] = nusc  # the serial path uses the same object
        loader = _load_nuscenes
    elif spec is WAYMO:
        from gpicture.data.waymo.reader import (  # lazy: the Waymo protos
            frame_refs,
            segment_files,
        )

        files = segment_files(cfg.root, cfg.split)
        for f in files:
            _file_digest(f, h)
        refs = [(str(p), i, cfg.grid) for p, i in frame_refs(files)]
        attrs = {"classes": list(spec.raw_classes), "sweeps": 1}
        init, init_args = None, ()
        loader = _load_waymo
    else:
        raise ValueError(f"dataset {spec.name!r}: no reader")
    attrs.update({
        "dataset": cfg.dataset, "split": cfg.split, "source_root": str(cfg.root),
        "point_cloud_range": list(cfg.grid.point_cloud_range), "voxel_size": list(cfg.grid.voxel_size),
        "grid_shape_zyx": list(cfg.grid.shape_zyx), "source_fingerprint": h.hexdigest(),
        "frames_in_source": len(refs), "box_classes": list(spec.box_types), "feature_names": list(spec.point_features),
    })
    i, n = cfg.shard
    lo, hi = i * len(refs) // n, (i + 1) * len(refs) // n
    attrs["shard"] = [i, n, lo, hi]
    return refs[lo:hi], loader, init, init_args, attrs


def _iter_frames(refs: list, loader: Callable, init: Callable | None, init_args: tuple, workers: int) -> Iterator:
    if workers <= 1 or len(refs) <= 1:
        yield from map(loader, refs)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=init, initargs=init_args) as pool:
        yield from pool.map(loader, refs, chunksize=max(1, min(8, len(refs) // (4 * workers))))


def convert(cfg: ConvertConfig, out: Path, force: bool = False,
            progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Convert a raw split (or one shard of it) into a voxel store at ``out``."""
    cfg.validate()
    refs, loader, init, init_args, attrs = _plan(cfg)
    if not refs:
        raise StoreError(f"{cfg.root}: split {cfg.split!r} has no frames (shard {cfg.shard[0]}/{cfg.shard[1]})")
    with StoreWriter(out, attrs, attrs["feature_names"], attrs["box_classes"], force=force) as w:
        for k, frame in enumerate(_iter_frames(refs, loader, init, init_args, cfg.workers)):
            w.append(frame)
            if progress:
                progress(k + 1, len(refs))
        w.commit()
    if w.dropped_nonfinite:
        warnings.warn(f"{cfg.root}: dropped {w.dropped_nonfinite} points with non-finite coordinates",
                      RuntimeWarning, stacklevel=2)
    written = VoxelStore.open(out).attrs
    return {"frames": written["n_frames"], "points": written["n_points"], "voxels": written["n_voxels"],
            "boxes": written["n_boxes"], "dropped_nonfinite_points": w.dropped_nonfinite}


def merge_stores(shards: list[Path], out: Path, force: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Join shard stores of one split (``convert --shard i/n``) into one store, in shard order."""
    stores = [VoxelStore.open(p) for p in shards]
    if not stores:
        raise StoreError("merge: no shard stores given")
    keys = ("dataset", "split", "point_cloud_range", "voxel_size", "source_fingerprint", "feature_names",
            "box_classes", "sweeps")
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
    done = 0
    with StoreWriter(out, attrs, list(ref["feature_names"]), list(ref["box_classes"]), force=force) as w:
        for s in stores:
            for i in range(len(s)):
                w.append(EncodedFrame(**_fields(s[i])))
                done += 1
                if progress:
                    progress(done, total)
        w.commit()
    return {"frames": total, "shards": len(stores)}
