"""Read Waymo Open Dataset v1 segments into ``RawFrame``s, without TensorFlow.

A segment is a TFRecord file ``segment-*.tfrecord`` of serialized ``dataset_pb2.Frame``
records under ``<root>/{training,validation,testing}/``. A frame is addressed by
``(file path, record index)`` (``frame_refs``) and decoded by ``read_frame``.

Points (``read_frame``): all five lidars, both returns, in the *vehicle frame* of
``Frame.pose``, exactly as ``frame_utils.convert_range_image_to_point_cloud`` (pixels
with range > 0 in row-major order; the TOP lidar through its per-pixel poses, those of
its first return, for both returns). Concatenated in this order::

    laser 1 (TOP) return 1, laser 1 return 2, laser 2 (FRONT) return 1, laser 2 return 2,
    ..., laser 5 (REAR) return 1, laser 5 return 2

i.e. by ``LaserName`` value (as the official function, which sorts the calibrations by
name, whatever the order in the record), first return before second return.

``read_frame(..., labels=False)`` (an unlabelled split) decodes no segmentation label and no
laser label: every label field of the frame is None.

Non-finite values follow the :class:`~gpicture.data.finite.NonFinitePolicy`: a point with a
non-finite coordinate, intensity, elongation or nlz value (a NaN in a range image, a pixel pose
or a laser extrinsic) is dropped and counted, or refused; a non-finite ``Frame.pose`` or laser
label box, or a segmentation class outside the table, is refused naming the file and record.
"""

from __future__ import annotations

import filecmp
import functools
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError
from waymo_open_dataset import dataset_pb2, label_pb2

from gpicture.data.finite import (
    DEFAULT_POLICY,
    ERROR,
    NonFinitePolicy,
    bad_box_rows,
    nonfinite_points_error,
)
from gpicture.data.frame import EmptyFrameError, RawFrame
from gpicture.data.spec import UNLABELLED, WAYMO
from gpicture.data.waymo.frame import frame_pose
from gpicture.data.waymo.matrix_codec import decode_matrix_float, decode_matrix_int32
from gpicture.data.waymo.range_image import inclinations, range_image_to_points
from gpicture.data.waymo.tfrecord import read_record, record_offsets

SPLITS = {"training": "training", "train": "training", "validation": "validation", "val": "validation",
          "testing": "testing", "test": "testing"}


def segment_files(root: Path, split: str) -> list[Path]:
    """The ``segment-*.tfrecord`` files of a split, sorted by name.

    Args:
        root: the dataset folder holding ``training/``, ``validation/``, ``testing/``; or
            one ``.tfrecord`` file, which is then the whole split (``split`` only names it).
        split: ``"training"``, ``"validation"`` or ``"testing"`` (also ``"train"``,
            ``"val"``, ``"test"``).

    Raises:
        ValueError: an unknown split.
        FileNotFoundError: the split's folder is missing or holds no segment (the
            message names the folder).
    """
    root = Path(root)
    if root.is_file():  # one segment file given directly: it is the split
        return [root]
    if split not in SPLITS:
        raise ValueError(f"unknown Waymo split {split!r}: one of training, validation, testing (or train, val, test)")
    folder = Path(root) / SPLITS[split]
    files = sorted(folder.glob("segment-*.tfrecord")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{folder}: no segment-*.tfrecord files")
    return files


def usable_segments(files: list[Path], empty: str = "error") -> tuple[list[Path], list[Path]]:
    """(the segments to convert, the empty ones skipped) of ``files``, refusing what would
    silently lose or double frames.

    A 0-byte segment (an interrupted download or copy) is a ValueError naming it, or with
    ``empty="skip"`` (params ``convert.empty_segments``) left out and returned for the count.
    Two files with the same bytes (one segment copied under another name) would give every
    frame twice: a ValueError naming both. Only files of equal size are compared, so a split
    of distinct segments costs one ``stat`` per file.

    Raises:
        ValueError: as above, or an unknown ``empty`` policy.
    """
    if empty not in ("error", "skip"):
        raise ValueError(f"convert.empty_segments: {empty!r} is not one of: error, skip")
    by_size: dict[int, list[Path]] = defaultdict(list)
    for f in files:
        by_size[os.stat(f).st_size].append(Path(f))
    skipped = by_size.pop(0, [])
    if skipped and empty == "error":
        raise ValueError(f"{skipped[0]}: empty Waymo segment (0 bytes; {len(skipped)} such files): an interrupted "
                         "download or copy? Remove it, or set convert.empty_segments: skip (--empty-segments skip)")
    for same in (group for group in by_size.values() if len(group) > 1):
        for i, a in enumerate(same):
            twin = next((b for b in same[i + 1:] if filecmp.cmp(a, b, shallow=False)), None)
            if twin is not None:
                raise ValueError(f"{twin}: the same bytes as {a} (one segment under two names?): "
                                 "its frames would be stored twice; remove one of them")
    empty_set = set(skipped)
    return [Path(f) for f in files if Path(f) not in empty_set], skipped


@functools.lru_cache(maxsize=256)
def _offsets(path: str, size: int, mtime_ns: int) -> tuple[tuple[int, int], ...]:
    return tuple(record_offsets(Path(path)))


def _record_offsets(path: Path) -> tuple[tuple[int, int], ...]:
    """``record_offsets``, cached per (path, size, modification time)."""
    st = os.stat(path)
    return _offsets(str(path), st.st_size, st.st_mtime_ns)


def frame_refs(files: Iterable[Path]) -> list[tuple[str, int]]:
    """``(path, record index)`` of every frame of ``files``, in file then record order.

    Cheap: scans only the record framing (headers, length CRCs, truncation); the data
    CRC of a record is checked when ``read_frame`` reads it.

    Raises:
        TFRecordError: a truncated file or a corrupt record header, naming the file.
    """
    return [(str(path), i) for path in files for i in range(len(_record_offsets(Path(path))))]


def _parse(path: Path, index: int) -> dataset_pb2.Frame:
    offsets = _record_offsets(path)
    if not 0 <= index < len(offsets):
        raise IndexError(f"{path}: record {index}: out of range ({len(offsets)} records)")
    data = read_record(path, offsets[index][0], index=index)
    frame = dataset_pb2.Frame()
    try:
        frame.ParseFromString(data)
    except DecodeError as e:
        raise ValueError(f"{path}: record {index}: not a Waymo Frame ({e})") from e
    return frame


def _laser_name(value: int) -> str:
    enum = dataset_pb2.LaserName.Name
    return enum.Name(value) if value in enum.values() else str(value)


def _decode(where: str, what: str, decoder, data: bytes) -> np.ndarray:
    try:
        return decoder(data)
    except Exception as e:  # zlib.error, ValueError, DecodeError: all mean a corrupt field
        raise ValueError(f"{where}: cannot decode {what} ({e})") from e


def read_frame(path: Path, index: int, labels: bool = True, nonfinite: NonFinitePolicy = DEFAULT_POLICY) -> RawFrame:
    """Decode record ``index`` of the segment at ``path`` (without its labels if ``labels`` is False;
    NaN / inf values as ``nonfinite`` says).

    Returns:
        A ``RawFrame`` in the vehicle frame: ``points`` (N, 3) float32 of all lidars and
        both returns in the order of the module docstring; ``features`` (N,) float32
        'intensity', 'elongation', 'return_index' (0 first, 1 second), 'nlz' (the
        range image's is_in_nlz channel as stored, 1 / -1), 'laser' (``LaserName``
        1..5); ``seg_labels`` (N,) uint8 the Waymo segmentation class where the return
        has segmentation labels (in Waymo: the TOP lidar's, both returns, on the 2 Hz
        labelled frames) and 255 elsewhere, or None when the frame has none; the laser
        labels as 7-DOF boxes ``x, y, z, length, width, height, heading`` with their
        type names ('TYPE_VEHICLE', ...), ``speed_x, speed_y`` (NaN without metadata),
        ``num_lidar_points_in_box``, label ids and ``detection_difficulty_level``;
        ``pose`` = ``Frame.pose`` (global_from_vehicle), ``frame_id``
        ``"<context name>/<timestamp_micros>"``. Points with a non-finite coordinate or
        feature are dropped (``nonfinite.points: drop``), their number in
        ``extra['dropped_nonfinite']``.

    Raises:
        TFRecordError: a truncated file or a CRC mismatch, naming the file.
        IndexError: no record ``index`` in the file.
        EmptyFrameError: a frame whose lasers hold no return (no range image, or none
            with a positive range): a stripped or camera-only record.
        ValueError: an undecodable record or field, a laser without calibration, a
            frame whose points are all non-finite, non-finite points under ``points: error``,
            a non-finite ``Frame.pose`` or box, a segmentation class outside the table;
            naming the file and the record.
    """
    path = Path(path)
    where = f"{path}: record {index}"
    frame = _parse(path, index)
    world_from_vehicle = frame_pose(frame)
    if not np.isfinite(world_from_vehicle).all():
        raise ValueError(f"{where}: Frame.pose has non-finite values (convert.nonfinite.poses: error)")
    calibrations = {c.name: c for c in frame.context.laser_calibrations}

    points, seg_parts = [], []
    images = 0  # range images decoded
    feats: dict[str, list[np.ndarray]] = {name: [] for name in WAYMO.point_features}
    has_seg = False
    for laser in sorted(frame.lasers, key=lambda laser: laser.name):
        if not (laser.ri_return1.range_image_compressed or laser.ri_return2.range_image_compressed):
            continue  # an entry without range images (a stripped file) holds no point to place
        name = _laser_name(laser.name)
        if laser.name not in calibrations:
            raise ValueError(f"{where}: laser {name} has no calibration")
        cal = calibrations[laser.name]
        extrinsic = np.asarray(cal.extrinsic.transform, dtype=np.float64)
        if extrinsic.size != 16:
            raise ValueError(f"{where}: laser {name}: extrinsic of {extrinsic.size} values, expected 16")
        extrinsic = extrinsic.reshape(4, 4)
        pixel_pose = None
        if laser.name == dataset_pb2.LaserName.TOP and laser.ri_return1.range_image_pose_compressed:
            pixel_pose = _decode(where, f"laser {name} pixel pose", decode_matrix_float,
                                 laser.ri_return1.range_image_pose_compressed)
        for return_index, ri in enumerate((laser.ri_return1, laser.ri_return2)):
            if not ri.range_image_compressed:
                continue
            what = f"laser {name} return {return_index + 1}"
            image = _decode(where, f"{what} range image", decode_matrix_float, ri.range_image_compressed)
            images += 1
            if image.ndim != 3 or image.shape[2] < 4:
                raise ValueError(f"{where}: {what}: range image of shape {image.shape}, expected (H, W, 4)")
            height, width = image.shape[:2]
            if pixel_pose is not None and pixel_pose.shape != (height, width, 6):
                raise ValueError(f"{where}: {what}: pixel pose of shape {pixel_pose.shape}, "
                                 f"expected {(height, width, 6)}")
            try:
                incl = inclinations(cal, height)
            except ValueError as e:
                raise ValueError(f"{where}: {what}: {e}") from e
            xyz, mask = range_image_to_points(
                image, extrinsic, incl, pixel_pose=pixel_pose,
                world_from_vehicle=world_from_vehicle if pixel_pose is not None else None,
            )
            n = len(xyz)
            points.append(xyz)
            pixels = image[mask]
            feats["intensity"].append(pixels[:, 1])
            feats["elongation"].append(pixels[:, 2])
            feats["nlz"].append(pixels[:, 3])
            feats["return_index"].append(np.full(n, return_index, dtype=np.float32))
            feats["laser"].append(np.full(n, laser.name, dtype=np.float32))
            if not labels:
                continue
            if ri.segmentation_label_compressed:
                has_seg = True
                seg = _decode(where, f"{what} segmentation labels", decode_matrix_int32,
                              ri.segmentation_label_compressed)
                if seg.shape != (height, width, 2):
                    raise ValueError(f"{where}: {what}: segmentation labels of shape {seg.shape}, "
                                     f"expected {(height, width, 2)}")
                classes = seg[..., 1][mask]
                bad = (classes < 0) | (classes >= len(WAYMO.raw_classes))
                if bad.any():
                    raise ValueError(f"{where}: {what}: segmentation class {int(classes[bad][0])} outside the table "
                                     f"0..{len(WAYMO.raw_classes) - 1} ({int(bad.sum())} such labels)")
                seg_parts.append(classes.astype(np.uint8))
            else:
                seg_parts.append(np.full(n, UNLABELLED, dtype=np.uint8))  # a return without labels

    xyz = np.concatenate(points) if points else np.zeros((0, 3), np.float32)
    if len(xyz) == 0:
        raise EmptyFrameError(
            f"{where} (frame {frame.context.name}/{frame.timestamp_micros}): no LiDAR returns in this frame: "
            f"a stripped or camera-only file? ({len(frame.lasers)} lasers, {images} range images, no return in any; "
            "`gpicture convert --skip-empty-frames` skips such frames)")
    finite = np.isfinite(xyz).all(axis=1)
    for key in ("intensity", "elongation", "nlz"):  # the range image's channels; the others are constants
        finite &= np.isfinite(np.concatenate(feats[key]))
    dropped = int(len(xyz) - finite.sum())
    if dropped and nonfinite.points == ERROR:
        raise nonfinite_points_error(where, dropped, len(xyz))
    if dropped:
        xyz = xyz[finite]
    if len(xyz) == 0:
        raise ValueError(f"{where}: no point of the frame has finite coordinates")
    features = {}
    for key, parts in feats.items():
        values = np.concatenate(parts).astype(np.float32, copy=False)
        features[key] = values[finite] if dropped else values
    seg_labels = None
    if has_seg:
        seg_labels = np.concatenate(seg_parts)
        if dropped:
            seg_labels = seg_labels[finite]

    boxes, names, velocity, num_points, ids, difficulty = _boxes(frame.laser_labels) if labels else (None,) * 6
    if boxes is not None and (bad := bad_box_rows(boxes, velocity)).any():
        raise ValueError(f"{where}: laser label {ids[int(np.argmax(bad))]!r}: non-finite box or infinite speed "
                         f"({int(bad.sum())} such labels; convert.nonfinite.boxes: error)")
    out = RawFrame(
        frame_id=f"{frame.context.name}/{frame.timestamp_micros}",
        scene=frame.context.name,
        timestamp_us=int(frame.timestamp_micros),
        pose=world_from_vehicle,
        points=np.ascontiguousarray(xyz, dtype=np.float32),
        features=features,
        seg_labels=seg_labels,
        boxes=boxes,
        box_names=names,
        box_velocity=velocity,
        box_num_points=num_points,
        box_ids=ids,
        box_difficulty=difficulty,
        extra={"dropped_nonfinite": dropped},
    )
    out.validate(where)
    return out


def _boxes(labels) -> tuple[np.ndarray, ...]:
    """The laser labels as RawFrame box arrays (vehicle frame, as Waymo states them)."""
    m = len(labels)
    boxes = np.zeros((m, 7), dtype=np.float32)
    velocity = np.full((m, 2), np.nan, dtype=np.float32)
    num_points = np.zeros(m, dtype=np.int32)
    difficulty = np.zeros(m, dtype=np.int8)
    names, ids = [], []
    for j, label in enumerate(labels):
        b = label.box
        boxes[j] = (b.center_x, b.center_y, b.center_z, b.length, b.width, b.height, b.heading)
        if label.HasField("metadata"):
            velocity[j] = (label.metadata.speed_x, label.metadata.speed_y)
        num_points[j] = label.num_lidar_points_in_box
        difficulty[j] = label.detection_difficulty_level
        t = label.type
        names.append(label_pb2.Label.Type.Name(t) if t in label_pb2.Label.Type.values() else f"TYPE_{t}")
        ids.append(label.id)
    return (boxes, np.asarray(names, dtype=str), velocity, num_points,
            np.asarray(ids, dtype=str), difficulty)
