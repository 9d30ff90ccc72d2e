"""Semantic-occupancy evaluation of a split: predictions as nuScenes-Occupancy files, then
mIoU over the classes and geometric IoU.

Predictions are a folder of ``<name>.npy`` files, one per frame with ground truth, each a
(K, 4) int16 array of rows z, y, x, label (1..C) of the occupied voxels of the run's grid —
the nuScenes-Occupancy layout. ``<name>`` is the keyframe's LIDAR_TOP sample_data token for
nuScenes (as the real files) and the frame id with ``/`` and other unsafe characters replaced
by ``_`` for Waymo. ``meta.json`` in the folder records the grid, the classes and which frame
each file is; scoring reads the grid from it and rebuilds the ground truth from the store on
that grid (:mod:`gpicture.data.occupancy_targets`).

Scores accumulate one confusion matrix over every voxel of every frame (as OpenOccupancy's SSC
metric), ground-truth IGNORE voxels excluded: per-class IoU = TP / (TP + FP + FN) (null for a
class absent from both predictions and ground truth), mIoU their mean, IoU the geometric IoU of
occupied (any class) against empty.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from gpicture.atomic import move_into_place, temp_sibling, write_file_atomic
from gpicture.data.occupancy_targets import (
    OPENOCCUPANCY_GRID,
    OccupancyGridSpec,
    dense_to_rows,
    frame_ground_truth,
    frames_with_ground_truth,
    store_truth,
)
from gpicture.data.spec import OCCUPANCY_IGNORE, DatasetSpec, OccupancyTruth
from gpicture.data.store import VoxelStore
from gpicture.eval.predictions import OccupancyPrediction, RawSource, finite

PREDICTIONS_FOLDER = "occupancy"  # write_predictions writes report_dir / PREDICTIONS_FOLDER
META = "meta.json"
PREDICTIONS_FORMAT = "gpicture-occupancy-predictions"


def predictions_folder(report_dir: Path) -> Path:
    """Where :func:`write_predictions` puts the prediction files of ``report_dir``."""
    return Path(report_dir) / PREDICTIONS_FOLDER


def waymo_file_name(frame_id: str) -> str:
    """A file-system-safe name for a Waymo frame id ``<context>/<timestamp>``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", frame_id)


def nuscenes_lidar_tokens(root: Path, version: str) -> dict[str, str]:
    """sample token -> its keyframe LIDAR_TOP sample_data token, from the raw nuScenes tables
    (read as JSON: only three tables are needed, not the whole devkit)."""
    folder = Path(root) / version
    tables = {}
    for name in ("sample_data", "calibrated_sensor", "sensor"):
        path = folder / f"{name}.json"
        if not path.is_file():
            raise ValueError(f"{path}: missing nuScenes table (needed to name predictions by LIDAR_TOP token)")
        tables[name] = json.loads(path.read_text())
    lidar = {s["token"] for s in tables["sensor"] if s["channel"] == "LIDAR_TOP"}
    cs = {c["token"] for c in tables["calibrated_sensor"] if c["sensor_token"] in lidar}
    return {sd["sample_token"]: sd["token"] for sd in tables["sample_data"]
            if sd["is_key_frame"] and sd["calibrated_sensor_token"] in cs}


def _file_names(spec: DatasetSpec, store: VoxelStore, frame_ids: list[str], source: RawSource | None) -> list[str]:
    if not spec.occupancy_files_by_lidar_token:
        names = [waymo_file_name(f) for f in frame_ids]
    else:
        root = source.root if source is not None else Path(store.attrs["source_root"])
        version = source.version if source is not None else str(store.attrs["version"])
        tokens = nuscenes_lidar_tokens(root, version)
        missing = [f for f in frame_ids if f not in tokens]
        if missing:
            raise ValueError(f"{Path(root) / version}: no LIDAR_TOP keyframe for sample {missing[0]} of {store.path}")
        names = [tokens[f] for f in frame_ids]
    if len(set(names)) != len(names):
        raise ValueError(f"{store.path}: two frames map to the same prediction file name")
    return names


def write_occupancy(spec: DatasetSpec, preds: Iterable[OccupancyPrediction], store: Path, report_dir: Path,
                    source: RawSource | None = None) -> int:
    """Write the predictions of the frames of ``store`` that have ground truth as
    ``report_dir/occupancy/`` (files + ``meta.json``; the folder appears complete or not at
    all). nuScenes file names come from the raw tables of ``source`` (default: the store's
    ``source_root`` / ``version``). Returns the number of frames written."""
    src = VoxelStore.open(store)
    frames = frames_with_ground_truth(src)
    names = dict(zip(frames, _file_names(spec, src, [src.frame_ids[i] for i in frames], source), strict=True))
    out = predictions_folder(report_dir)
    tmp = temp_sibling(out)
    try:
        written, grid = {}, None
        for pred in preds:
            if grid is not None and pred.grid != grid:
                raise ValueError(f"frame {pred.frame_id}: predictions on two grids")
            grid = pred.grid
            name = names[pred.frame_index]
            np.save(tmp / f"{name}.npy", dense_to_rows(pred.labels))
            written[name] = pred.frame_id
        if grid is None:
            raise ValueError(f"{store}: no frame with occupancy ground truth to predict")
        meta = {"format": PREDICTIONS_FORMAT, "dataset": spec.name, "grid": grid.to_dict(),
                "class_names": spec.occupancy_classes(src.attrs["classes"]), "store_fingerprint": src.fingerprint,
                "frames": written}
        (tmp / META).write_text(json.dumps(meta, indent=1))
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(written)


def write_prediction_folder(out: Path, spec: DatasetSpec, grid: OccupancyGridSpec, class_names: list[str],
                            rows: dict[str, np.ndarray], file_names: dict[str, str]) -> None:
    """Write ``rows`` (frame id -> (K, 4) rows) as a predictions folder at ``out`` with file names
    ``file_names`` (frame id -> name): external or reference predictions in the same layout."""
    tmp = temp_sibling(Path(out))
    try:
        for fid, r in rows.items():
            np.save(tmp / f"{file_names[fid]}.npy", np.asarray(r, dtype=np.int16))
        meta = {"format": PREDICTIONS_FORMAT, "dataset": spec.name, "grid": grid.to_dict(), "class_names": class_names,
                "frames": {file_names[fid]: fid for fid in rows}}
        (tmp / META).write_text(json.dumps(meta, indent=1))
        move_into_place(tmp, Path(out))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_meta(folder: Path, spec: DatasetSpec, grid: OccupancyGridSpec | None) -> tuple[OccupancyGridSpec, dict[str, str]]:
    path = folder / META
    if not path.is_file():
        raise ValueError(f"{path}: missing (a predictions folder records its grid and frames there)")
    try:
        meta = json.loads(path.read_text())
        if meta.get("format") != PREDICTIONS_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {PREDICTIONS_FORMAT!r}")
        have = OccupancyGridSpec.from_params(meta["grid"])
        frames = {str(k): str(v) for k, v in meta["frames"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a valid predictions meta file ({exc})") from exc
    if meta.get("dataset") != spec.name:
        raise ValueError(f"{path}: predictions for {meta.get('dataset')!r}, scoring {spec.name!r}")
    if grid is not None and have != grid:
        raise ValueError(f"{path}: predictions on grid {have.to_dict()}, expected {grid.to_dict()}")
    if spec.occupancy_truth is OccupancyTruth.OCCUPANCY_ROWS:  # comparable with the 0.2 m files
        try:
            have.factor_from(OPENOCCUPANCY_GRID)
        except ValueError as exc:
            raise ValueError(f"{path}: grid cannot be compared with nuScenes-Occupancy: {exc}") from exc
    return have, frames


def read_rows(path: Path, grid: OccupancyGridSpec, num_classes: int) -> np.ndarray:
    """A predictions file as validated (K, 4) int64 rows; ValueError naming it otherwise."""
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable .npy file ({exc})") from exc
    if rows.ndim != 2 or rows.shape[1] != 4 or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"{path}: array of shape {rows.shape} and dtype {rows.dtype}, expected (K, 4) integer "
                         "rows z, y, x, label")
    rows = rows.astype(np.int64)
    shape = np.asarray(grid.shape_zyx)
    if len(rows) and ((rows[:, :3] < 0).any() or (rows[:, :3] >= shape).any()):
        raise ValueError(f"{path}: voxel outside the {tuple(shape)} (z, y, x) grid of its meta.json")
    if len(rows) and ((rows[:, 3] < 1) | (rows[:, 3] > num_classes)).any():
        raise ValueError(f"{path}: labels outside 1..{num_classes}")
    flat = (rows[:, 0] * shape[1] + rows[:, 1]) * shape[2] + rows[:, 2]
    if len(np.unique(flat)) != len(flat):
        raise ValueError(f"{path}: a voxel appears in more than one row")
    return rows


def _flat(rows: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    r = rows.astype(np.int64)
    return (r[:, 0] * shape[1] + r[:, 1]) * shape[2] + r[:, 2]


def frame_confusion(gt: np.ndarray, pred: np.ndarray, shape_zyx: tuple[int, int, int], num_classes: int) -> np.ndarray:
    """(C + 1, C + 1) int64 confusion (rows: truth, columns: prediction, 0 = empty) of one frame's
    rows on a grid of ``shape_zyx``, OCCUPANCY_IGNORE truth voxels excluded. Built over the union of the two
    row sets; the empty/empty count is the rest of the grid."""
    c = num_classes + 1
    gk, pk = _flat(gt, shape_zyx), _flat(pred, shape_zyx)
    keys = np.union1d(gk, pk)
    g = np.zeros(len(keys), dtype=np.int64)
    p = np.zeros(len(keys), dtype=np.int64)
    g[np.searchsorted(keys, gk)] = gt[:, 3]
    p[np.searchsorted(keys, pk)] = pred[:, 3]
    valid = g != OCCUPANCY_IGNORE
    conf = np.bincount(g[valid] * c + p[valid], minlength=c * c).reshape(c, c)
    n_valid = int(np.prod(shape_zyx)) - int((~valid).sum())
    conf[0, 0] += n_valid - conf.sum()
    return conf


def metrics_from_confusion(conf: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """{mIoU, IoU, per_class_IoU} of a confusion matrix (see the module docstring)."""
    conf = conf.astype(np.float64)
    tp = np.diag(conf)[1:]
    denom = conf[1:, :].sum(1) + conf[:, 1:].sum(0) - tp
    per = {n: (float(t / d) if d > 0 else None) for n, t, d in zip(class_names, tp, denom, strict=True)}
    present = [v for v in per.values() if v is not None]
    occ_tp = conf[1:, 1:].sum()
    occ_union = conf.sum() - conf[0, 0]
    return {"mIoU": float(np.mean(present)) if present else None,
            "IoU": float(occ_tp / occ_union) if occ_union > 0 else None, "per_class_IoU": per}


def score_occupancy(spec: DatasetSpec, predictions: Path, store: Path, report_dir: Path,
                    source: RawSource | None = None, grid: OccupancyGridSpec | None = None) -> dict[str, Any]:
    """Score a predictions folder against the ground truth of ``store`` on the grid of its
    ``meta.json`` (``grid`` given: it must be that one). The folder must hold exactly the frames
    of the store that have ground truth. Writes ``report_dir/occupancy_confusion.json`` and
    returns strict-JSON ``{mIoU, IoU, per_class_IoU, frames, truth}`` (null where undefined;
    ``truth``: where the ground truth came from, :func:`store_truth`). ``source`` is
    accepted for symmetry with the other tasks; the ground truth comes from the store."""
    del source
    folder = Path(predictions)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such predictions folder")
    have, frames = read_meta(folder, spec, grid)
    src = VoxelStore.open(store)
    names = spec.occupancy_classes(src.attrs["classes"])
    wanted = {src.frame_ids[i]: i for i in frames_with_ground_truth(src)}
    by_frame = {fid: name for name, fid in frames.items()}
    for name, fid in frames.items():
        if fid not in wanted:
            raise ValueError(f"{folder / META}: file {name}.npy is frame {fid!r}, not a frame with ground truth "
                             f"of {store}")
    for fid in wanted:
        if fid not in by_frame:
            raise ValueError(f"{folder / META}: no prediction for frame {fid!r} of {store}")
    extra = sorted({p.stem for p in folder.glob("*.npy")} - set(frames))
    if extra:
        raise ValueError(f"{folder / (extra[0] + '.npy')}: not listed in {META}")
    shape = have.shape_zyx
    conf = np.zeros((len(names) + 1, len(names) + 1), dtype=np.int64)
    for fid, i in wanted.items():
        path = folder / f"{by_frame[fid]}.npy"
        if not path.is_file():
            raise ValueError(f"{path}: missing (listed in {META})")
        pred = read_rows(path, have, len(names))
        gt = frame_ground_truth(src[i], spec, have)
        conf += frame_confusion(gt.astype(np.int64), pred, shape, len(names))
    metrics = {**metrics_from_confusion(conf, names), "frames": len(wanted),
               "truth": store_truth(spec, src.attrs).value}
    write_file_atomic(Path(report_dir) / "occupancy_confusion.json",
                      json.dumps({"classes": ["empty", *names], "grid": have.to_dict(), "frames": len(wanted),
                                  "confusion": conf.tolist()}))
    return finite(metrics)
