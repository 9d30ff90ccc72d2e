"""In-group index: the rank of each element among those of its group.

For ``groups = [2, 0, 2, 2, 0]`` the result is ``[0, 0, 1, 2, 1]``: ranks follow
the order of appearance. The DSVT set partition uses it to number the voxels inside
each window. The native op (``csrc/in_group_index*.{cpp,cu}``) is O(N) on the CPU;
the reference is a stable sort and a scan, O(N log N), on any device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gpicture.ops.native import load_native


def in_group_index_reference(groups: Tensor) -> Tensor:
    """Pure-torch in-group index of a 1-D int64 tensor of non-negative group ids."""
    if groups.dim() != 1:
        raise ValueError(f"in_group_index: groups must be 1-D, got shape {tuple(groups.shape)}")
    n = groups.numel()
    if n == 0:
        return torch.empty_like(groups, dtype=torch.long)
    keys, order = torch.sort(groups.long(), stable=True)
    pos = torch.arange(n, device=groups.device)
    is_start = torch.ones(n, dtype=torch.bool, device=groups.device)
    is_start[1:] = keys[1:] != keys[:-1]
    run_start = torch.where(is_start, pos, torch.zeros_like(pos)).cummax(0).values
    out = torch.empty_like(pos)
    out[order] = pos - run_start
    return out


def in_group_index(groups: Tensor, num_groups: int | None = None) -> Tensor:
    """In-group index through the native op when built, else the reference.

    ``num_groups`` (an upper bound on the ids) saves the native CPU op a max();
    results are identical either way.
    """
    native = load_native()
    usable = native is not None and (not groups.is_cuda or native.with_cuda)
    if usable and groups.dim() == 1:
        return native.in_group_index(groups.long(), -1 if num_groups is None else int(num_groups))
    return in_group_index_reference(groups)
