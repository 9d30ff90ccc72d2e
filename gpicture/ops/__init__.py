"""Small tensor ops, each with a native implementation in ``csrc/`` (or, for the segment
reductions of :mod:`gpicture.ops.scatter`, torch_scatter's) where available and a pure-torch
reference that is always available."""

from gpicture.ops.group_index import in_group_index, in_group_index_reference
from gpicture.ops.native import native_available
from gpicture.ops.rotated_iou import (
    nms_reference,
    nms_rotated,
    paired_iou_3d,
    rotated_iou,
    rotated_iou_reference,
)
from gpicture.ops.scatter import (
    scatter_max,
    scatter_max_reference,
    scatter_mean,
    scatter_mean_reference,
    torch_scatter_available,
)

__all__ = [
    "in_group_index",
    "in_group_index_reference",
    "native_available",
    "nms_reference",
    "nms_rotated",
    "paired_iou_3d",
    "rotated_iou",
    "rotated_iou_reference",
    "scatter_max",
    "scatter_max_reference",
    "scatter_mean",
    "scatter_mean_reference",
    "torch_scatter_available",
]
