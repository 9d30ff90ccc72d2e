"""Waymo detection predictions and ground truth as the official metric expects them.

Predictions are written and read as a serialized ``waymo_open_dataset.protos.metrics_pb2.Objects``
(the format of the official submission and of ``compute_detection_metrics_main``): one
``Object`` per box with the frame's ``context_name`` and ``frame_timestamp_micros``, a
vehicle-frame ``label_pb2.Label.Box``, the class and the score. Frames are keyed
``<context_name>/<timestamp_micros>``, the store's frame ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from gpicture.atomic import write_file_atomic
from gpicture.data.store import VoxelStore
from gpicture.eval.predictions import DetectionPrediction
from gpicture.eval.waymo_boxes import CLASSES, FrameBoxes

__all__ = ["read_objects", "store_ground_truth", "write_objects"]


def _type_values() -> dict[str, int]:
    from waymo_open_dataset import label_pb2

    return {name: label_pb2.Label.Type.Value(name) for name in CLASSES}


def write_objects(preds: Iterable[DetectionPrediction], path: Path) -> int:
    """Write per-frame predictions (vehicle-frame boxes, ``TYPE_*`` class names) as a
    ``metrics_pb2.Objects`` file, atomically. Returns the number of objects written."""
    from waymo_open_dataset.protos import metrics_pb2

    types = _type_values()
    objs = metrics_pb2.Objects()
    for pred in preds:
        context, _, ts = pred.frame_id.rpartition("/")
        if not context or not ts.isdigit():
            raise ValueError(f"frame id {pred.frame_id!r} is not <context_name>/<timestamp_micros>")
        boxes = np.asarray(pred.boxes, np.float64).reshape(-1, 7)
        for b, name, score in zip(boxes, pred.labels, np.asarray(pred.scores, np.float64), strict=True):
            o = objs.objects.add()
            o.context_name, o.frame_timestamp_micros, o.score = context, int(ts), float(score)
            o.object.type = types[str(name)]
            o.object.box.center_x, o.object.box.center_y, o.object.box.center_z = map(float, b[:3])
            o.object.box.length, o.object.box.width, o.object.box.height = map(float, b[3:6])
            o.object.box.heading = float(b[6])
    write_file_atomic(Path(path), objs.SerializeToString())
    return len(objs.objects)


def read_objects(path: Path, frame_ids: Sequence[str] | None = None) -> dict[str, FrameBoxes]:
    """Predictions of a ``metrics_pb2.Objects`` file, per frame id. With ``frame_ids``, every
    frame of the file must be one of them (ValueError naming the file otherwise); frames
    without objects get empty predictions."""
    from google.protobuf.message import DecodeError
    from waymo_open_dataset.protos import metrics_pb2

    path = Path(path)
    objs = metrics_pb2.Objects()
    try:
        objs.ParseFromString(path.read_bytes())
    except DecodeError as exc:
        raise ValueError(f"{path}: not a serialized waymo metrics_pb2.Objects ({exc})") from None
    names = {v: k for k, v in _type_values().items()}
    per: dict[str, list] = {}
    for o in objs.objects:
        if o.object.type not in names:  # signs and unknowns are not scored
            continue
        b = o.object.box
        per.setdefault(f"{o.context_name}/{o.frame_timestamp_micros}", []).append(
            (b.center_x, b.center_y, b.center_z, b.length, b.width, b.height, b.heading, o.object.type, o.score))
    if frame_ids is not None:
        extra = sorted(set(per) - set(frame_ids))
        if extra:
            raise ValueError(f"{path}: predictions for {len(extra)} frame(s) not in the ground truth, "
                             f"e.g. {extra[0]!r} (predictions for other frames?)")
        for f in frame_ids:
            per.setdefault(f, [])
    out = {}
    for f, rows in per.items():
        a = np.asarray(rows, np.float64).reshape(-1, 9)
        out[f] = FrameBoxes(a[:, :7], np.array([names[int(t)] for t in a[:, 7]], dtype=object), scores=a[:, 8])
    return out


def store_ground_truth(store: VoxelStore) -> dict[str, FrameBoxes]:
    """Ground truth of every frame of a Waymo voxel store: the scored classes' boxes with
    their LiDAR point counts and labelled difficulty."""
    out = {}
    for i, fid in enumerate(store.frame_ids):
        boxes, names, _, num_points = store.frame_boxes(i)
        keep = np.isin(names.astype(str), CLASSES)
        out[fid] = FrameBoxes(boxes[keep], names[keep], num_points=num_points[keep],
                              difficulty=store.box_difficulty(i)[keep])
    return out
