"""Linear centred kernel alignment (CKA) between two sets of activations.

Linear CKA of X (n, d1) and Y (n, d2), rows being the same n samples (voxels) and
columns centred, is ``||Yᵀ X||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F)``. It is computed in
feature space (d1 x d2 products), never through the n x n Gram matrices, in float64.
It lies in [0, 1], is 1 for identical inputs and is invariant to orthogonal
transforms and isotropic scaling of either input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _centred(x: Tensor) -> Tensor:
    """float64 (n, d) with centred columns, scaled to unit Frobenius norm (0 if constant)."""
    x = x.detach().reshape(x.shape[0], -1).double()
    xc = x - x.mean(0, keepdim=True)
    # A constant column centres to exactly 0 here (x - mean can leave rounding noise,
    # which would otherwise turn a constant input into an arbitrary CKA).
    xc = torch.where((x == x[:1]).all(0, keepdim=True), 0.0, xc)
    norm = torch.linalg.matrix_norm(xc)
    return xc / norm.clamp(min=torch.finfo(torch.float64).tiny)


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA (float64 scalar) of ``x`` (n, d1) and ``y`` (n, d2); inputs of more
    dimensions are flattened to (n, -1). 0 when either side is constant or n < 2."""
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka: x and y need the same number of rows, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if x.shape[0] < 2:
        return torch.zeros((), dtype=torch.float64, device=x.device)
    xc, yc = _centred(x), _centred(y.to(x.device))
    cross = torch.linalg.matrix_norm(yc.T @ xc) ** 2
    den = torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc)
    return torch.where(den > 0, cross / den.clamp(min=torch.finfo(torch.float64).tiny), 0.0)


def layerwise_cka(acts_a: Sequence[Tensor], acts_b: Sequence[Tensor]) -> Tensor:
    """(L,) float64: linear CKA of each layer's activations ``acts_a[l]`` vs ``acts_b[l]``."""
    if len(acts_a) != len(acts_b):
        raise ValueError(f"layerwise_cka: {len(acts_a)} vs {len(acts_b)} layers")
    if not acts_a:
        return torch.zeros(0, dtype=torch.float64)
    return torch.stack([linear_cka(a, b).cpu() for a, b in zip(acts_a, acts_b, strict=True)])
