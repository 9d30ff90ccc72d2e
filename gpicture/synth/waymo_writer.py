"""Write simulated Waymo frames as real Waymo Open Dataset v1 segments (TFRecords of ``Frame``).

Each ``WaymoFrame`` becomes one ``dataset_pb2.Frame``: context (name, lidar
calibrations, stats), timestamp, pose, both returns of each lidar as compressed range
images (with all-zero camera projections, since the official decoder requires them,
segmentation labels when given, and TOP's pixel poses), and one laser label per object
with a Waymo type. Boxes and velocities are given in the vehicle frame, as Waymo does.
No cameras, no camera labels, no no-label zones.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from waymo_open_dataset import dataset_pb2, label_pb2

from gpicture.data.waymo.matrix_codec import (
    DEFAULT_ZLIB_LEVEL,
    encode_matrix_float,
    encode_matrix_int32,
    encode_zeros_int32,
)
from gpicture.data.waymo.tfrecord import write_records
from gpicture.synth import portable as pm
from gpicture.synth.records import ObjectStates, WaymoFrame, WaymoLaser, WaymoReturn

TIME_OF_DAY = "Day"
LOCATION = "location_sf"
WEATHER = "sunny"
CAMERA_PROJECTION_CHANNELS = 6


def label_id(instance_id: int) -> str:
    """A stable 22-character Waymo-like label id for an object's ``instance_id``.

    Deterministic (the same object keeps its id over the frames of a segment) and
    shaped like the real ids (URL-safe base64 of 16 bytes).
    """
    digest = hashlib.blake2b(str(int(instance_id)).encode(), digest_size=16).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _transform(matrix: np.ndarray) -> list[float]:
    """The 16 row-major floats of a 4x4 matrix (``dataset_pb2.Transform.transform``)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"transform of shape {m.shape}, expected (4, 4)")
    return m.reshape(-1).tolist()


def _fill_calibration(c: dataset_pb2.LaserCalibration, laser: WaymoLaser) -> None:
    c.name = int(laser.name)
    if laser.beam_inclinations is not None and len(laser.beam_inclinations):
        c.beam_inclinations.extend(np.asarray(laser.beam_inclinations, dtype=np.float64).tolist())
    # Real calibrations carry min/max even with explicit beams; the reader ignores them then.
    c.beam_inclination_min = float(laser.inclination_min)
    c.beam_inclination_max = float(laser.inclination_max)
    c.extrinsic.transform.extend(_transform(laser.vehicle_from_sensor))


def _fill_return(
    ri: dataset_pb2.RangeImage, ret: WaymoReturn, pixel_pose: np.ndarray | None, zlib_level: int
) -> None:
    image = np.asarray(ret.range_image)
    if image.ndim != 3 or image.shape[2] != 4:
        raise ValueError(f"range image of shape {image.shape}, expected (H, W, 4)")
    height, width = image.shape[:2]
    ri.range_image_compressed = encode_matrix_float(image, zlib_level)
    ri.camera_projection_compressed = encode_zeros_int32((height, width, CAMERA_PROJECTION_CHANNELS), zlib_level)
    if ret.segmentation is not None:
        seg = np.asarray(ret.segmentation)
        if seg.shape != (height, width, 2):
            raise ValueError(f"segmentation of shape {seg.shape}, expected {(height, width, 2)}")
        ri.segmentation_label_compressed = encode_matrix_int32(seg, zlib_level)
    if pixel_pose is not None:
        pose = np.asarray(pixel_pose)
        if pose.shape != (height, width, 6):
            raise ValueError(f"pixel pose of shape {pose.shape}, expected {(height, width, 6)}")
        ri.range_image_pose_compressed = encode_matrix_float(pose, zlib_level)


def vehicle_frame_boxes(objects: ObjectStates, world_from_vehicle: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World-frame objects as Waymo's 7-DOF vehicle-frame boxes: centres (K, 3), headings
    (K,) rad and velocities (K, 3), all in the vehicle frame (boxes upright in it)."""
    pose = np.asarray(world_from_vehicle, dtype=np.float64)
    rotation = pose[:3, :3]
    # vehicle = R^T (world - t)
    center = pm.matmul(np.asarray(objects.center, dtype=np.float64) - pose[:3, 3], rotation)
    velocity = pm.matmul(np.asarray(objects.velocity, dtype=np.float64), rotation)
    yaw = np.asarray(objects.yaw, dtype=np.float64)
    sin, cos = pm.sincos(yaw)
    direction = pm.matmul(np.stack([cos, sin, np.zeros_like(yaw)], axis=-1), rotation)
    heading = pm.arctan2(direction[:, 1], direction[:, 0])
    return center, heading, velocity


def _fill_labels(out: dataset_pb2.Frame, frame: WaymoFrame) -> dict[int, int]:
    """Append the laser labels; returns the number of labels per Waymo type."""
    objects = frame.objects
    waymo_type = np.asarray(frame.waymo_type, dtype=np.int64)
    keep = np.flatnonzero(waymo_type != label_pb2.Label.TYPE_UNKNOWN)
    counts: dict[int, int] = {}
    if keep.size == 0:
        return counts
    center, heading, velocity = vehicle_frame_boxes(objects, frame.world_from_vehicle)
    center, heading, velocity = center[keep], heading[keep], velocity[keep]
    size = np.asarray(objects.size, dtype=np.float64)[keep]
    num_points = np.asarray(objects.num_points, dtype=np.int64)[keep]
    difficulty = np.asarray(frame.difficulty, dtype=np.int64)[keep]
    instance_id = np.asarray(objects.instance_id, dtype=np.int64)[keep]
    for j in range(keep.size):
        label = out.laser_labels.add()
        box = label.box
        box.center_x, box.center_y, box.center_z = (float(v) for v in center[j])
        box.length, box.width, box.height = (float(v) for v in size[j])
        box.heading = float(heading[j])
        meta = label.metadata
        meta.speed_x, meta.speed_y = float(velocity[j, 0]), float(velocity[j, 1])
        meta.accel_x, meta.accel_y = 0.0, 0.0
        t = int(waymo_type[keep[j]])
        label.type = t
        label.id = label_id(int(instance_id[j]))
        label.num_lidar_points_in_box = int(num_points[j])
        label.num_top_lidar_points_in_box = int(num_points[j])
        label.detection_difficulty_level = int(difficulty[j])
        label.tracking_difficulty_level = int(difficulty[j])
        counts[t] = counts.get(t, 0) + 1
    return counts


def frame_to_proto(frame: WaymoFrame, zlib_level: int = DEFAULT_ZLIB_LEVEL) -> dataset_pb2.Frame:
    """The ``dataset_pb2.Frame`` of a simulated frame (compressed fields at ``zlib_level``).

    Raises:
        ValueError: on malformed arrays, or a TOP lidar without pixel poses (the
            official reader needs them).
    """
    out = dataset_pb2.Frame()
    out.context.name = frame.context_name
    out.timestamp_micros = int(frame.timestamp_us)
    out.pose.transform.extend(_transform(frame.world_from_vehicle))
    for laser in frame.lasers:
        if laser.name == dataset_pb2.LaserName.TOP and laser.pixel_pose is None:
            raise ValueError(f"{frame.context_name}@{frame.timestamp_us}: the TOP lidar needs pixel poses")
        _fill_calibration(out.context.laser_calibrations.add(), laser)
        proto = out.lasers.add()
        proto.name = int(laser.name)
        first, second = laser.returns
        _fill_return(proto.ri_return1, first, laser.pixel_pose, zlib_level)
        _fill_return(proto.ri_return2, second, None, zlib_level)
    counts = _fill_labels(out, frame)
    stats = out.context.stats
    for t in sorted(counts):
        oc = stats.laser_object_counts.add()
        oc.type = t
        oc.count = counts[t]
    stats.time_of_day = TIME_OF_DAY
    stats.location = LOCATION
    stats.weather = WEATHER
    return out


def write_segment(frames: list[WaymoFrame], path: Path, zlib_level: int = DEFAULT_ZLIB_LEVEL) -> None:
    """Write ``frames`` (in time order) as one TFRecord segment at ``path``, atomically.

    The caller names the file (``segment-<context_name>_with_camera_labels.tfrecord``).
    """

    def records() -> Iterator[bytes]:
        for frame in frames:
            yield frame_to_proto(frame, zlib_level).SerializeToString()

    write_records(Path(path), records())
