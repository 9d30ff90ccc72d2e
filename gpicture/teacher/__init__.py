"""The GPICTURE teacher: a frozen Seal-pre-trained Res16UNet34C and its per-voxel feature cache."""

from gpicture.teacher.seal import SealTeacher

__all__ = ["SealTeacher"]
