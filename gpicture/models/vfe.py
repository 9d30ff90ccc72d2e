"""Dynamic pillar-3D voxel feature encoder (VFE).

Every point is described by its xyz, the configured point features, its offset to
the mean of its voxel's points and its offset to the voxel centre (metres). PFN layers
(Linear, BatchNorm, ReLU) run per point; between layers each point is concatenated
with the max over its voxel (a layer before the last has half its filters, as the
reference dynamic pillar VFE), and the last layer's scatter-max is the voxel feature.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gpicture.ops.scatter import scatter_max, scatter_mean


class DynamicVFE(nn.Module):
    """Points -> voxel features (V, filters[-1])."""

    def __init__(self, num_point_features: int, voxel_size: tuple[float, float, float],
                 point_cloud_range: tuple[float, ...], filters: tuple[int, ...] = (64, 64)) -> None:
        super().__init__()
        self.register_buffer("voxel_size", torch.tensor(voxel_size, dtype=torch.float32), persistent=False)
        self.register_buffer("origin", torch.tensor(point_cloud_range[:3], dtype=torch.float32), persistent=False)
        dims = [3 + num_point_features + 6, *filters]
        self.layers = nn.ModuleList()
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            # As the reference PFN layer: a layer before the last outputs half its filters, so that
            # with the voxel max concatenated the next layer's input has exactly `filters[i]` channels.
            width = cout if i == len(filters) - 1 else cout // 2
            self.layers.append(nn.ModuleDict({
                "linear": nn.Linear(cin, width, bias=False),
                "norm": nn.BatchNorm1d(width, eps=1e-3, momentum=0.01),
            }))
        self.out_channels = filters[-1]

    def forward(self, points: Tensor, point_features: Tensor, point_voxel: Tensor, voxel_coords: Tensor) -> Tensor:
        """``points`` (N, 3) m; ``point_features`` (N, F); ``point_voxel`` (N,) row of
        ``voxel_coords`` (V, 4) b, z, y, x, -1 for points to ignore."""
        keep = point_voxel >= 0
        pts, feats, vox = points[keep], point_features[keep], point_voxel[keep].long()
        v = len(voxel_coords)
        mean = scatter_mean(pts, vox, dim=0, dim_size=v)
        centre = (voxel_coords[:, [3, 2, 1]].float() + 0.5) * self.voxel_size + self.origin
        x = torch.cat([pts, feats, pts - mean[vox], pts - centre[vox]], 1)
        for i, layer in enumerate(self.layers):
            x = torch.relu(layer["norm"](layer["linear"](x)))
            pooled = scatter_max(x, vox, dim=0, dim_size=v)[0]
            if i < len(self.layers) - 1:
                x = torch.cat([x, pooled[vox]], 1)
            else:
                return pooled
        raise AssertionError("unreachable")
