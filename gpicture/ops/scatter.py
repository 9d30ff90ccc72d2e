"""Segment reductions along one dimension: ``scatter_max`` and ``scatter_mean``.

They take torch_scatter's arguments and give its results: ``src`` is reduced along ``dim``
into ``dim_size`` segments chosen by ``index`` (broadcast against ``src`` as torch_scatter
does: a 1-D index runs along ``dim``), an empty segment gives 0 (and, for the maximum, the
argmax ``src.size(dim)``). With torch_scatter installed its compiled kernels are used; without
it (a machine with only PyTorch, such as a GPU host with its own CUDA build) the same results
come from vectorized ``scatter_reduce`` / ``scatter_add``, so the models run there unchanged.

The pure-torch versions (``*_reference``) match torch_scatter's CPU kernels exactly, ties
included: the maximum's argmax is the first position holding the segment's maximum, its
gradient flows to that position only, and values that torch_scatter's kernel never lets win
(NaN and values at or below the dtype's lowest finite value) do not take part. Unlike
torch_scatter's CUDA kernels (atomics) they repeat exactly on CUDA. ``out=`` is not offered:
no caller accumulates into an existing tensor.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

try:
    import torch_scatter as _torch_scatter
except ImportError:  # not installed: the pure-torch versions below
    _torch_scatter = None
except OSError as exc:  # installed but built for another torch (undefined symbols)
    warnings.warn(f"torch_scatter unusable ({exc}); using the pure-torch scatter ops", RuntimeWarning, stacklevel=2)
    _torch_scatter = None


def torch_scatter_available() -> bool:
    """Whether torch_scatter's compiled kernels back :func:`scatter_max` / :func:`scatter_mean`."""
    return _torch_scatter is not None


def _broadcast(index: Tensor, src: Tensor, dim: int) -> Tensor:
    """``index`` expanded to ``src``'s shape as torch_scatter does (a view, no copy): a 1-D
    index runs along ``dim``; a higher-rank one gains trailing dimensions."""
    if index.dim() == 1:
        index = index.view([1] * dim + [-1])
    index = index.view(*index.shape, *([1] * (src.dim() - index.dim())))
    return index.expand_as(src)


def _out_size(src: Tensor, index: Tensor, dim: int, dim_size: int | None) -> list[int]:
    size = list(src.shape)
    # torch_scatter's default: one past the largest index (a host sync; callers pass dim_size)
    size[dim] = dim_size if dim_size is not None else (int(index.max()) + 1 if index.numel() else 0)
    return size


def _lowest(dtype: torch.dtype) -> float | int:
    return torch.finfo(dtype).min if dtype.is_floating_point else torch.iinfo(dtype).min


def scatter_max_reference(src: Tensor, index: Tensor, dim: int = -1,
                          dim_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Per-segment maximum and its argmax (int64 positions along ``dim``), pure torch.

    Values are those of ``src`` (same dtype); an empty segment gives 0 and argmax
    ``src.size(dim)``. Gradients reach the argmax element only (as torch_scatter's)."""
    dim = dim % src.dim()
    size = _out_size(src, index, dim, dim_size)
    n = src.shape[dim]
    idx = _broadcast(index.long(), src, dim)
    if n == 0:  # all segments empty: zeros (still in the autograd graph) and argmax 0 (= n)
        return src.new_zeros(size).scatter_add(dim, idx, src), torch.zeros(size, dtype=torch.long, device=src.device)
    lowest = _lowest(src.dtype)
    with torch.no_grad():
        live = src > lowest  # NaN and the dtype's lowest never win in torch_scatter's kernel either
        vals = src.detach().masked_fill(~live, lowest)
        best = torch.full(size, lowest, dtype=src.dtype, device=src.device).scatter_reduce_(dim, idx, vals, "amax")
        pos_dtype = torch.int32 if n < 2**31 - 1 else torch.long  # halves the (N, C) position tensor
        shape = [1] * src.dim()
        shape[dim] = n
        pos = torch.arange(n, dtype=pos_dtype, device=src.device).view(shape).expand_as(src)
        cand = torch.where(live & (vals == best.gather(dim, idx)), pos, n)
        arg = torch.full(size, n, dtype=pos_dtype, device=src.device).scatter_reduce_(dim, idx, cand, "amin").long()
    # A gather, so that autograd sends each segment's gradient to its argmax alone.
    out = src.gather(dim, arg.clamp_max(n - 1)).masked_fill(arg == n, 0)
    return out, arg


def scatter_mean_reference(src: Tensor, index: Tensor, dim: int = -1, dim_size: int | None = None) -> Tensor:
    """Per-segment mean (0 for an empty segment; floor division for integer ``src``), pure torch.

    Half and bfloat16 inputs are summed and counted in float32 and the mean cast back
    (torch_scatter sums in the input dtype, which in bfloat16 miscounts past 256 rows)."""
    dim = dim % src.dim()
    size = _out_size(src, index, dim, dim_size)
    index = index.long()
    work = src.float() if src.dtype in (torch.float16, torch.bfloat16) else src
    total = work.new_zeros(size).scatter_add(dim, _broadcast(index, src, dim), work)
    index_dim = min(dim, index.dim() - 1)  # torch_scatter counts along the index's own dimension
    count_size = list(index.shape)
    count_size[index_dim] = size[dim]
    ones = torch.ones(index.shape, dtype=work.dtype, device=src.device)
    count = ones.new_zeros(count_size).scatter_add_(index_dim, index, ones).clamp_min_(1)
    count = _broadcast(count, total, dim)
    mean = total / count if work.is_floating_point() else torch.div(total, count, rounding_mode="floor")
    return mean.to(src.dtype)


def scatter_max(src: Tensor, index: Tensor, dim: int = -1, dim_size: int | None = None) -> tuple[Tensor, Tensor]:
    """torch_scatter's ``scatter_max`` where installed, else :func:`scatter_max_reference`."""
    if _torch_scatter is not None:
        return _torch_scatter.scatter_max(src, index, dim=dim, dim_size=dim_size)
    return scatter_max_reference(src, index, dim, dim_size)


def scatter_mean(src: Tensor, index: Tensor, dim: int = -1, dim_size: int | None = None) -> Tensor:
    """torch_scatter's ``scatter_mean`` where installed, else :func:`scatter_mean_reference`."""
    if _torch_scatter is not None:
        return _torch_scatter.scatter_mean(src, index, dim=dim, dim_size=dim_size)
    return scatter_mean_reference(src, index, dim, dim_size)
