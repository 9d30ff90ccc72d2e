"""Reading the lidar content of a parsed ``dataset_pb2.Frame``, without TensorFlow.

Follows ``frame_utils.parse_range_image_and_camera_projection`` and
``convert_range_image_to_point_cloud``: the TOP lidar's pixel poses are those of its
first return (``ri_return1.range_image_pose_compressed``), used for both returns;
other lidars have none. Points come out in the vehicle frame of ``Frame.pose`` (m).
"""

from __future__ import annotations

import numpy as np
from waymo_open_dataset import dataset_pb2

from gpicture.data.waymo.matrix_codec import decode_matrix_float
from gpicture.data.waymo.range_image import inclinations, range_image_to_points


def laser_calibration(frame: dataset_pb2.Frame, laser_name: int) -> dataset_pb2.LaserCalibration:
    """The ``context.laser_calibrations`` entry of ``laser_name`` (a ``dataset_pb2.LaserName`` value)."""
    for c in frame.context.laser_calibrations:
        if c.name == laser_name:
            return c
    raise KeyError(f"frame {frame.context.name}@{frame.timestamp_micros}: no calibration of laser {laser_name}")


def _laser(frame: dataset_pb2.Frame, laser_name: int) -> dataset_pb2.Laser:
    for laser in frame.lasers:
        if laser.name == laser_name:
            return laser
    raise KeyError(f"frame {frame.context.name}@{frame.timestamp_micros}: no laser {laser_name}")


def _return(frame: dataset_pb2.Frame, laser_name: int, return_index: int) -> dataset_pb2.RangeImage:
    laser = _laser(frame, laser_name)
    if return_index == 0:
        return laser.ri_return1
    if return_index == 1:
        return laser.ri_return2
    raise ValueError(f"return_index {return_index}: 0 (first) or 1 (second)")


def frame_pose(frame: dataset_pb2.Frame) -> np.ndarray:
    """``(4, 4)`` float64 ``world_from_vehicle`` of the frame (``Frame.pose``)."""
    return np.asarray(frame.pose.transform, dtype=np.float64).reshape(4, 4)


def decode_range_image(frame: dataset_pb2.Frame, laser_name: int, return_index: int) -> np.ndarray:
    """``(H, W, 4)`` float32 range (m), intensity, elongation, is_in_nlz of one return (0 or 1)."""
    return decode_matrix_float(_return(frame, laser_name, return_index).range_image_compressed)


def decode_pixel_pose(frame: dataset_pb2.Frame, laser_name: int) -> np.ndarray | None:
    """``(H, W, 6)`` float32 pixel pose (roll, pitch, yaw, x, y, z) of a laser's first return, None when absent."""
    data = _laser(frame, laser_name).ri_return1.range_image_pose_compressed
    return decode_matrix_float(data) if data else None


def decode_laser_points(frame: dataset_pb2.Frame, laser_name: int, return_index: int) -> np.ndarray:
    """``(N, 3)`` float32 vehicle-frame points (m) of one return (0 or 1) of one laser.

    The pixels with range > 0 in row-major order, with the frame's calibration; for
    TOP, the pixel poses and ``Frame.pose`` (as ``convert_range_image_to_point_cloud``).
    """
    return decode_laser_points_and_mask(frame, laser_name, return_index)[0]


def decode_laser_points_and_mask(
    frame: dataset_pb2.Frame, laser_name: int, return_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """``decode_laser_points`` and the ``(H, W)`` bool mask of the pixels the points come from."""
    calibration = laser_calibration(frame, laser_name)
    range_image = decode_range_image(frame, laser_name, return_index)
    extrinsic = np.asarray(calibration.extrinsic.transform, dtype=np.float64).reshape(4, 4)
    pixel_pose = decode_pixel_pose(frame, laser_name) if laser_name == dataset_pb2.LaserName.TOP else None
    return range_image_to_points(
        range_image,
        extrinsic,
        inclinations(calibration, range_image.shape[0]),
        pixel_pose=pixel_pose,
        world_from_vehicle=frame_pose(frame) if pixel_pose is not None else None,
    )
