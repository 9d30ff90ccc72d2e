"""DSVT's dynamic set partition, vectorized: sorts, scans and gathers, O(N log N).

Voxels are grouped into windows (optionally shifted); inside a window they are
ordered along x (x-major in-window index) for one partition and along y for the
other; a window of n voxels is cut into ceil(n / S) sets of exactly S slots, slot p
of set l taking the window's voxel number floor((l * S + p) * n / (ceil(n / S) * S)).
Sets are therefore full, voxels are spread evenly, and a window with fewer voxels
than slots repeats some of them; repeats are masked out of attention (key padding)
and out of the write-back. No Python loop runs over windows, sets or voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class WindowAssignment:
    """Each voxel's window under one (window shape, shift) configuration."""

    win_id: Tensor  # (V,) int64 dense window index (batch included), sorted ids are contiguous per window
    in_win: Tensor  # (V, 3) int64 x, y, z inside the window, 0..shape-1


@dataclass
class SetPartition:
    """Voxels in sets of exactly ``set_size`` slots."""

    voxel: Tensor  # (T, S) int64 voxel index of every slot
    pad_mask: Tensor  # (T, S) bool: the slot repeats the previous slot's voxel (key padding)
    first: Tensor  # (T, S) bool: the slot is the voxel's first appearance in the partition (write-back)
    set_window: Tensor  # (T,) int64 window of each set

    @property
    def num_sets(self) -> int:
        return self.voxel.shape[0]


def assign_windows(coords: Tensor, sparse_shape: tuple[int, int, int], window: tuple[int, int, int],
                   shift: tuple[int, int, int]) -> WindowAssignment:
    """Windows of voxels ``coords`` (V, 4) b, z, y, x on a grid of ``sparse_shape`` (x, y, z)."""
    b = coords[:, 0].long()
    xyz = torch.stack([coords[:, 3], coords[:, 2], coords[:, 1]], 1).long()
    w = torch.tensor(window, device=coords.device)
    s = torch.tensor(shift, device=coords.device)
    shape = torch.tensor(sparse_shape, device=coords.device)
    shifted = xyz + s
    widx = torch.div(shifted, w, rounding_mode="floor")
    n_win = torch.div(shape + s + w - 1, w, rounding_mode="floor")  # windows per axis, shift included
    win_id = ((b * n_win[2] + widx[:, 2]) * n_win[1] + widx[:, 1]) * n_win[0] + widx[:, 0]
    return WindowAssignment(win_id=win_id, in_win=shifted - widx * w)


def partition_sets(assign: WindowAssignment, window: tuple[int, int, int], set_size: int, axis: str) -> SetPartition:
    """Sets of one partition: ``axis`` "x" orders voxels x-major inside windows, "y" y-major."""
    wx, wy, wz = window
    cx, cy, cz = assign.in_win.unbind(1)
    key = (cx * wy + cy) * wz + cz if axis == "x" else (cy * wx + cx) * wz + cz
    n_keys = wx * wy * wz
    order = torch.argsort(assign.win_id * n_keys + key)  # keys are unique per voxel: order-independent
    sorted_win = assign.win_id[order]
    _, counts = torch.unique_consecutive(sorted_win, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    n_sets = torch.div(counts + set_size - 1, set_size, rounding_mode="floor")
    set_window = torch.repeat_interleave(torch.arange(len(counts), device=order.device), n_sets)
    set_start = torch.cumsum(n_sets, 0) - n_sets
    local = torch.arange(len(set_window), device=order.device) - set_start[set_window]  # set index inside its window
    p = torch.arange(set_size, device=order.device)
    n_w = counts[set_window][:, None]
    slots = n_sets[set_window][:, None] * set_size
    idx = torch.div((local[:, None] * set_size + p) * n_w, slots, rounding_mode="floor")  # (T, S) in [0, n_w)
    voxel = order[starts[set_window][:, None] + idx]
    pad = torch.zeros_like(idx, dtype=torch.bool)
    pad[:, 1:] = idx[:, 1:] == idx[:, :-1]
    # First appearance across the window: slot values only grow, so compare with the previous slot overall.
    flat = (starts[set_window][:, None] + idx).reshape(-1)
    first = torch.ones_like(flat, dtype=torch.bool)
    first[1:] = flat[1:] != flat[:-1]
    return SetPartition(voxel=voxel, pad_mask=pad, first=first.view_as(idx), set_window=set_window)
