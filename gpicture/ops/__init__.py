"""Small tensor ops, each with a native implementation in ``csrc/`` where built
and a pure-torch reference that is always available."""

from gpicture.ops.group_index import in_group_index, in_group_index_reference
from gpicture.ops.native import native_available
from gpicture.ops.rotated_iou import (
    nms_reference,
    nms_rotated,
    paired_iou_3d,
    rotated_iou,
    rotated_iou_reference,
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
]
