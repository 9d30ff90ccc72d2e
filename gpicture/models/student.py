"""The GPICTURE student: dynamic VFE + DSVT encoder, built from params.yaml.

The same backbone serves pre-training (encoder on the visible subset of voxels),
BEV detection (``bev``), per-point segmentation and occupancy (``per_input_voxel``
features), and CKA (``DSVTOutput.activations``: one (V_l, d) tensor per set-attention
layer, ``layer_index`` mapping input voxels to their rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gpicture.data.batch import VoxelBatch
from gpicture.models.dsvt import DSVTConfig, DSVTEncoder, DSVTOutput
from gpicture.models.vfe import DynamicVFE


@dataclass(frozen=True)
class StudentConfig:
    """Backbone settings (the ``model`` profile of a dataset) and the store's grid."""

    point_features: tuple[str, ...]
    vfe_filters: tuple[int, ...]
    voxel_size: tuple[float, float, float]
    point_cloud_range: tuple[float, ...]
    dsvt: DSVTConfig

    @classmethod
    def from_params(cls, p: dict[str, Any], store_attrs: dict[str, Any]) -> StudentConfig:
        """Build from a model profile; the grid comes from the voxel store, and a profile
        that names a grid must agree with it."""
        vs = tuple(float(v) for v in store_attrs["voxel_size"])
        pcr = tuple(float(v) for v in store_attrs["point_cloud_range"])
        for key, have in (("voxel_size", vs), ("point_cloud_range", pcr)):
            if key in p and tuple(float(v) for v in p[key]) != have:
                raise ValueError(f"model profile wants {key} {list(p[key])} but the store has {list(have)}: "
                                 "convert the data with the profile's grid")
        nz, ny, nx = store_attrs["grid_shape_zyx"]
        filters = tuple(int(v) for v in p["vfe_filters"])
        if filters[-1] != int(p["d_model"]):
            raise ValueError(f"the VFE's last filter ({filters[-1]}) must equal d_model ({p['d_model']})")
        return cls(point_features=tuple(p["point_features"]), vfe_filters=filters, voxel_size=vs,
                   point_cloud_range=pcr, dsvt=DSVTConfig.from_params(p, (int(nx), int(ny), int(nz))))

    @property
    def grid(self) -> dict[str, list]:
        """The grid the backbone runs on, as a store's attrs and a ``student.pt`` record it:
        ``voxel_size`` (m, x y z), ``point_cloud_range`` (m, x0 y0 z0 x1 y1 z1), ``grid_shape_zyx``."""
        nx, ny, nz = self.dsvt.sparse_shape
        return {"voxel_size": list(self.voxel_size), "point_cloud_range": list(self.point_cloud_range),
                "grid_shape_zyx": [int(nz), int(ny), int(nx)]}


class Student(nn.Module):
    """Points and voxels of a batch -> DSVT output (and a BEV map)."""

    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vfe = DynamicVFE(len(cfg.point_features), cfg.voxel_size, cfg.point_cloud_range, cfg.vfe_filters)
        self.dsvt = DSVTEncoder(cfg.dsvt)

    def forward(self, points: Tensor, point_features: Tensor, point_voxel: Tensor, voxel_coords: Tensor,
                keep: Tensor | None = None) -> DSVTOutput:
        """Encode the voxels (V, 4) b, z, y, x — or only the rows ``keep`` (a bool mask or
        indices): the points of dropped voxels never reach the encoder. Output rows follow
        the kept voxels' order."""
        if keep is not None:
            keep_idx = keep.nonzero()[:, 0] if keep.dtype == torch.bool else keep
            remap = torch.full((len(voxel_coords),), -1, dtype=torch.long, device=voxel_coords.device)
            remap[keep_idx] = torch.arange(len(keep_idx), device=voxel_coords.device)
            point_voxel = torch.where(point_voxel >= 0, remap[point_voxel.clamp_min(0)], point_voxel)
            voxel_coords = voxel_coords[keep_idx]
        feats = self.vfe(points, point_features, point_voxel, voxel_coords)
        return self.dsvt(feats, voxel_coords)

    def encode(self, voxels: VoxelBatch, keep: Tensor | None = None) -> DSVTOutput:
        """:meth:`forward` on a batch's points and voxels."""
        return self(voxels.points, voxels.features, voxels.point_voxel, voxels.voxel_coords, keep=keep)

    def bev(self, out: DSVTOutput, batch_size: int) -> Tensor:
        return DSVTEncoder.bev(out, batch_size)

    @property
    def bev_channels(self) -> int:
        nz = self.cfg.dsvt.sparse_shape[2]
        for s in self.cfg.dsvt.z_strides:
            nz = -(-nz // s[2])
        return self.cfg.dsvt.d_model * nz
