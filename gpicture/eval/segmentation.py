"""Segmentation evaluation of a split: predictions in the datasets' own formats, then mIoU.

Predictions folder (``<report_dir>/predictions``, written whole or not at all):

- nuScenes: the lidarseg challenge submission layout, as the devkit's ``LidarSegEval``
  reads it: ``lidarseg/<eval_set>/<lidar_sample_data_token>_lidarseg.bin`` (uint8, one
  value per point of the keyframe LIDAR_TOP ``.pcd.bin``, in file order, evaluation
  classes 1..16) and ``<eval_set>/submission.json`` (``{"meta": {"use_camera": false,
  "use_lidar": true, ...}}``). The store lacks the points the reader removed (within 1 m
  of the sensor in x and y, non-finite): they get the prediction of the nearest kept point.
- Waymo: ``<context name>/<timestamp_micros>.bin`` per frame (the store's frame id plus
  ``.bin``): uint8, one Waymo segmentation class (1..22, ``attrs["classes"]``) per point
  of the store frame, in store order (all lidars and both returns; the labelled ones are
  the TOP lidar's), plus ``meta.json`` (format, classes, the store's fingerprint).

Scoring: per-class IoU = TP / (TP + FP + FN) from one confusion matrix over the split,
with the ignore class (nuScenes 0, Waymo UNDEFINED) and unlabelled points left out;
mIoU = mean over the classes with a non-empty union. nuScenes is scored by the devkit's
``LidarSegEval`` on the raw dataset and checked against our own confusion matrix.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from gpicture.atomic import move_into_place, temp_sibling, write_file_atomic
from gpicture.data.nuscenes_reader import POINT_DIMS, _keep_mask, open_nuscenes
from gpicture.data.spec import DatasetSpec, SegmentationFormat
from gpicture.data.store import VoxelStore
from gpicture.eval.nuscenes_scenes import lidarseg_on_present_scenes, sample_tokens, split_scenes
from gpicture.eval.predictions import RawSource, SegmentationPrediction, finite

PREDICTIONS = "predictions"
SUBMISSION_META = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False,
                   "use_external": False}


# -- metric ---------------------------------------------------------------------------------


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int | None = 0) -> np.ndarray:
    """(C, C) int64 confusion matrix (rows ground truth, columns predictions) of integer
    labels in 0..C-1, with the row and column of ``ignore_index`` zeroed (as the devkit)."""
    gt, pred = np.asarray(gt, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if gt.shape != pred.shape:
        raise ValueError(f"{gt.shape} labels for {pred.shape} predictions")
    for what, a in (("labels", gt), ("predictions", pred)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{what} outside 0..{num_classes - 1}")
    cm = np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    if ignore_index is not None:
        cm[ignore_index, :] = 0
        cm[:, ignore_index] = 0
    return cm


def iou_from_confusion(cm: np.ndarray, ignore_index: int | None = 0) -> tuple[float, np.ndarray]:
    """(mIoU, per-class IoU (C,) float64 with NaN for the ignore class and empty unions)."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / union
    if ignore_index is not None:
        iou[ignore_index] = np.nan
    valid = ~np.isnan(iou)
    return (float(iou[valid].mean()) if valid.any() else float("nan")), iou


def confusion_miou(gt: np.ndarray, pred: np.ndarray, num_classes: int,
                   ignore_index: int | None = 0) -> tuple[float, np.ndarray, np.ndarray]:
    """(mIoU, per-class IoU, confusion matrix) of labels against predictions (see
    :func:`confusion`, :func:`iou_from_confusion`)."""
    cm = confusion(gt, pred, num_classes, ignore_index)
    miou, iou = iou_from_confusion(cm, ignore_index)
    return miou, iou, cm


# -- nuScenes helpers -------------------------------------------------------------------------


def _raw_source(store: VoxelStore, source: RawSource | None) -> RawSource:
    if source is not None:
        return source
    return RawSource.of_store(store.attrs)


def _lidar_files(nusc: Any, sample_token: str) -> tuple[str, Path, Path | None]:
    """(LIDAR_TOP sample_data token, its .pcd.bin, its lidarseg .bin or None) of a keyframe."""
    sd_token = nusc.get("sample", sample_token)["data"]["LIDAR_TOP"]
    sd = nusc.get("sample_data", sd_token)
    root = Path(nusc.dataroot)
    try:
        labels = root / nusc.get("lidarseg", sd_token)["filename"]
    except (KeyError, AttributeError):
        labels = None
    return sd_token, root / sd["filename"], labels


def _kept_mask(pcd: Path) -> tuple[np.ndarray, np.ndarray]:
    """(xyz (n, 3) of the .pcd.bin, mask of the points the nuScenes reader kept, in file order)."""
    scan = np.fromfile(pcd, dtype=np.float32)
    if scan.size % POINT_DIMS:
        raise ValueError(f"{pcd}: not a whole number of {POINT_DIMS}-float32 points")
    scan = scan.reshape(-1, POINT_DIMS)
    keep, _ = _keep_mask(scan)
    return scan[:, :3], keep


def _fill_removed(xyz: np.ndarray, keep: np.ndarray, pred_kept: np.ndarray) -> np.ndarray:
    """Predictions for every point of a scan: the kept points' own, the others' from their
    nearest kept point (non-finite coordinates: the first kept point's)."""
    out = np.empty(len(xyz), dtype=np.uint8)
    out[keep] = pred_kept
    if (~keep).any():
        query = np.nan_to_num(xyz[~keep], nan=0.0, posinf=0.0, neginf=0.0)
        _, nearest = cKDTree(xyz[keep]).query(query, k=1)
        out[~keep] = pred_kept[nearest]
    return out


# -- writing ----------------------------------------------------------------------------------


def write_segmentation(spec: DatasetSpec, preds: Iterable[SegmentationPrediction], store: Path, report_dir: Path,
                       source: RawSource | None = None) -> int:
    """Write the predictions folder ``report_dir/predictions`` of the frames of ``store`` in the
    dataset's format (module docstring), replacing any previous one only when complete.
    nuScenes needs the raw dataset to map the store's points back to the ``.pcd.bin`` files:
    ``source``, or by default the store's own (attrs ``source_root``, ``version``, ``split``).
    Returns the number of frames written."""
    src = VoxelStore.open(store)
    out = Path(report_dir) / PREDICTIONS
    tmp = temp_sibling(out)
    try:
        n = 0
        match spec.segmentation_format:
            case SegmentationFormat.NUSCENES_LIDARSEG:
                raw = _raw_source(src, source)
                nusc = open_nuscenes(raw.root, raw.version)
                bins = tmp / "lidarseg" / raw.eval_set
                bins.mkdir(parents=True)
                for pred in preds:
                    sd_token, pcd, _ = _lidar_files(nusc, pred.frame_id)
                    xyz, keep = _kept_mask(pcd)
                    if int(keep.sum()) != len(pred.labels):
                        raise ValueError(f"{pcd}: {int(keep.sum())} kept keyframe points, the store frame "
                                         f"{pred.frame_id} has {len(pred.labels)}: the store was not converted "
                                         "from this dataset")
                    _fill_removed(xyz, keep, pred.labels).tofile(bins / f"{sd_token}_lidarseg.bin")
                    n += 1
                (tmp / raw.eval_set).mkdir()
                (tmp / raw.eval_set / "submission.json").write_text(json.dumps({"meta": SUBMISSION_META}, indent=1))
            case SegmentationFormat.WAYMO_BINS:
                for pred in preds:
                    path = tmp / f"{pred.frame_id}.bin"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    pred.labels.astype(np.uint8).tofile(path)
                    n += 1
                meta = {"format": "gpicture-waymo-segmentation", "classes": list(src.attrs["classes"]),
                        "store_fingerprint": src.fingerprint, "frames": n,
                        "layout": "<context>/<timestamp_micros>.bin: uint8 class per point of the store frame"}
                (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return n


# -- scoring ----------------------------------------------------------------------------------


def _read_prediction(path: Path, n_points: int, num_classes: int) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"{path}: missing prediction file")
    pred = np.fromfile(path, dtype=np.uint8)
    if len(pred) != n_points:
        raise ValueError(f"{path}: {len(pred)} predictions for {n_points} points")
    if pred.size and (pred.min() < 1 or pred.max() >= num_classes):
        raise ValueError(f"{path}: predictions outside 1..{num_classes - 1}")
    return pred


def _check_no_extra(folder: Path, expected: set[Path]) -> None:
    extra = sorted(p for p in folder.rglob("*.bin") if p not in expected)
    if extra:
        raise ValueError(f"{extra[0]}: a prediction for a frame that is not in the split "
                         f"({len(extra)} such files)")


def score_segmentation(spec: DatasetSpec, predictions: Path, store: Path, report_dir: Path,
                       source: RawSource | None = None) -> dict[str, Any]:
    """mIoU of a predictions folder on the split of ``store``: strict-JSON
    ``{"mIoU": float, "per_class_IoU": {name: float | None}, "frames": int}`` (None: a class
    with neither points nor predictions). Writes ``report_dir/segmentation_summary.json``
    (also the confusion matrix). A folder for other frames, a missing file or a wrong number
    of points is refused with a ValueError naming the file.

    nuScenes: the devkit's ``LidarSegEval`` on the raw dataset (``source``, default the
    store's source), checked against our own confusion matrix of the store's labels (plus
    the raw labels of the few points the store does not hold); Waymo: our own, from the
    store's labels (UNDEFINED and unlabelled points ignored).
    """
    predictions = Path(predictions)
    if not predictions.is_dir():
        raise ValueError(f"{predictions}: no such predictions folder")
    src = VoxelStore.open(store)
    if src.attrs["dataset"] != spec.name:
        raise ValueError(f"{store}: a {src.attrs['dataset']} store, not {spec.name}")
    if not src.attrs.get("has_seg_labels"):
        raise ValueError(f"{store}: the store has no segmentation labels")
    classes = list(src.attrs["classes"])
    extra: dict[str, Any] = {}
    names, lut = spec.segmentation_eval_classes(classes)  # lut: raw -> evaluation class, unlabelled -> 0
    c = len(names)
    match spec.segmentation_format:
        case SegmentationFormat.NUSCENES_LIDARSEG:
            from nuscenes.eval.lidarseg.evaluate import (
                LidarSegEval,  # the devkit's heavy modules only when used
            )
            source = _raw_source(src, source)
            nusc = open_nuscenes(source.root, source.version)
            scenes = split_scenes(nusc, source.eval_set)
            samples = sample_tokens(nusc, scenes)
            if sorted(samples) != sorted(src.frame_ids):
                raise ValueError(f"{store}: its {len(src)} frames are not the {len(samples)} samples of the nuScenes "
                                 f"split {scenes.describe()}")
            bins = predictions / "lidarseg" / source.eval_set
            if not bins.is_dir():
                raise ValueError(f"{bins}: missing lidarseg predictions folder (lidarseg/<eval_set>/)")
            cm = np.zeros((c, c), dtype=np.int64)
            expected: set[Path] = set()
            for i in range(len(src)):
                fr = src[i]
                sd_token, pcd, label_file = _lidar_files(nusc, fr.frame_id)
                path = bins / f"{sd_token}_lidarseg.bin"
                expected.add(path)
                xyz, keep = _kept_mask(pcd)
                pred = _read_prediction(path, len(xyz), c)
                k = spec.segmented_count(fr)
                if int(keep.sum()) != k:
                    raise ValueError(f"{pcd}: {int(keep.sum())} kept points, the store frame {fr.frame_id} has {k}")
                cm += confusion(lut[fr.seg_labels[:k]], pred[keep], c, 0)
                if (~keep).any() and label_file is not None:  # points the store does not hold: raw labels
                    cm += confusion(lut[np.fromfile(label_file, dtype=np.uint8)[~keep]], pred[~keep], c, 0)
            _check_no_extra(bins, expected)
            ours, _ = iou_from_confusion(cm, 0)
            try:
                with lidarseg_on_present_scenes(nusc, scenes):  # a split the dataset holds only part of
                    res = LidarSegEval(nusc, str(predictions), source.eval_set).evaluate()
            except Exception as e:  # noqa: BLE001  (the devkit's asserts and KeyErrors: a message naming the folder)
                raise ValueError(f"{predictions}: the nuScenes devkit's LidarSegEval failed on it "
                                 f"({type(e).__name__}: {e})") from None
            miou = float(res["miou"])
            # the devkit divides by float32 unions: exact below 2**24 points per class, 1e-7 relative above
            if not (np.isclose(miou, ours, rtol=0, atol=1e-6) or (np.isnan(miou) and np.isnan(ours))):
                raise RuntimeError(f"{predictions}: the devkit's mIoU {miou} differs from the store's {ours}")
            per_class = {n: float(res["iou_per_class"][n]) for n in names[1:]}
            extra.update({"mIoU_store": ours, "scenes": list(scenes.present), "scenes_missing": scenes.missing})
        case SegmentationFormat.WAYMO_BINS:
            cm = np.zeros((c, c), dtype=np.int64)
            expected = set()
            for i in range(len(src)):
                fr = src[i]
                path = predictions / f"{fr.frame_id}.bin"
                expected.add(path)
                pred = _read_prediction(path, len(fr.points), c)
                cm += confusion(lut[fr.seg_labels], pred, c, 0)
            _check_no_extra(predictions, expected)
            miou, iou = iou_from_confusion(cm, 0)
            per_class = {n: float(iou[j]) for j, n in enumerate(names) if j != 0}
    metrics = finite({"mIoU": miou, "per_class_IoU": per_class, "frames": len(src), **extra})
    summary = {**metrics, "classes": names, "confusion": cm.tolist()}
    write_file_atomic(Path(report_dir) / "segmentation_summary.json", json.dumps(summary, indent=1))
    return metrics
