"""DSVT (Wang et al., CVPR 2023): dynamic sparse voxel transformer with rotated set partitions."""

from gpicture.models.dsvt.model import DSVTConfig, DSVTEncoder, DSVTOutput

__all__ = ["DSVTConfig", "DSVTEncoder", "DSVTOutput"]
