"""The segmentation labels of one return of a parsed Waymo ``Frame``: what the tests compare
(the reader decodes them inline, per point)."""

from __future__ import annotations

import numpy as np
from waymo_open_dataset import dataset_pb2

from gpicture.data.waymo.matrix_codec import decode_matrix_int32


def decode_segmentation(frame: dataset_pb2.Frame, laser_name: int, return_index: int) -> np.ndarray | None:
    """``(H, W, 2)`` int32 instance id, Waymo segmentation class of one return (0 or 1); None when not labelled."""
    laser = next(laser for laser in frame.lasers if laser.name == laser_name)
    data = (laser.ri_return1, laser.ri_return2)[return_index].segmentation_label_compressed
    return decode_matrix_int32(data) if data else None
