"""gpicture.training.launch: data-parallel worker processes of one thread each, without torchrun."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as tdist

from gpicture.training.launch import launch


def _sum_of_ranks(dist, scale: int) -> tuple[int, float, int]:
    t = torch.tensor([float(dist.rank + 1)])
    if dist.world_size > 1:
        tdist.all_reduce(t)  # the process group joins every rank
    return dist.world_size, scale * float(t), torch.get_num_threads()


def _refuse_on_rank_one(dist) -> str:
    if dist.rank == 1:
        raise ValueError("frame 3 of store s.zarr holds no points")
    tdist.barrier()
    return "unreachable"


def test_launch_runs_a_process_group_and_returns_rank_zeros_result() -> None:
    world, value, threads = launch(_sum_of_ranks, (10,), 2)
    assert (world, value, threads) == (2, 30.0, 1)   # ranks 0 + 1 -> 1 + 2, one thread each
    assert launch(_sum_of_ranks, (10,), 1)[:2] == (1, 10.0)   # in this process


def test_launch_reports_a_ranks_bad_input_as_its_error() -> None:
    with pytest.raises(ValueError, match="frame 3 of store s.zarr holds no points"):
        launch(_refuse_on_rank_one, (), 2)
    with pytest.raises(ValueError, match="procs must be >= 1"):
        launch(_sum_of_ranks, (1,), 0)
