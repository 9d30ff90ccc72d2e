"""Data-parallel training on one machine without ``torchrun``: ``procs`` worker processes.

``launch(fn, args, procs)`` runs ``fn(dist, *args)`` in ``procs`` spawned processes joined in a
gloo (CPU) / NCCL (GPU) process group, each with one intra-op thread on the CPU, and returns
rank 0's result. Why: on a small CPU, one training step's sparse, small kernels scale poorly
across threads, so N single-thread DDP processes (each on its own frames, gradients averaged)
get more frames through than one process on N threads; ``params`` ``procs`` sets it and the
per-process ``batch_size`` keeps the global batch (``procs x batch_size``). Under ``torchrun``
(``WORLD_SIZE`` set) or with ``procs`` 1 it is a plain call in this process; with CUDA there
is one process per GPU at most (``procs`` is capped at the device count).

An error a rank raises (ValueError / OSError: bad input) comes back as the same exception
type with its message; anything else fails the launch with the rank's traceback.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from gpicture.atomic import claim_output
from gpicture.training.engine import setup_distributed

EXPECTED = (ValueError, OSError)  # bad input: reported to the user as one clear error


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, fn: Callable[..., Any], args: tuple, procs: int, port: int, results: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(procs), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist = setup_distributed()
    try:
        out = fn(dist, *args)
        if rank == 0:
            results.put(("ok", out))
    except EXPECTED as exc:
        results.put(("error", (type(exc).__name__, str(exc))))
        raise SystemExit(2) from None
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()


@contextmanager
def claim_run(out: Path) -> Iterator[None]:
    """Hold the exclusive claim on a training run's folder ``out`` (:func:`gpicture.atomic.claim_output`:
    a second fine-tune or pre-training of the same folder fails at once instead of interleaving
    checkpoints). Taken by the launching process; under ``torchrun`` by rank 0 only, since every
    rank runs the command."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    with claim_output(out, "training-run", exist_ok=True):
        yield


def launch(fn: Callable[..., Any], args: tuple, procs: int = 1) -> Any:
    """``fn(dist, *args)`` on ``procs`` processes (module docstring); rank 0's return value."""
    if procs < 1:
        raise ValueError(f"procs must be >= 1, got {procs}")
    if torch.cuda.is_available():
        procs = min(procs, torch.cuda.device_count())  # one GPU per process
    if procs == 1 or "WORLD_SIZE" in os.environ:
        return fn(setup_distributed(), *args)
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    failure: Exception | None = None
    try:
        mp.start_processes(_rank_main, args=(fn, args, procs, _free_port(), results), nprocs=procs,
                           start_method="spawn")
    except (mp.ProcessExitedException, mp.ProcessRaisedException) as exc:
        failure = exc  # the other ranks are stopped; an expected error of one of them is in the queue
    got = [results.get() for _ in iter(lambda: not results.empty(), False)]
    errors = [v for status, v in got if status == "error"]
    if errors:  # bad input beats the follow-on failures of the ranks that waited for the one that stopped
        name, msg = errors[0]
        raise {"ValueError": ValueError}.get(name, OSError)(msg)
    if failure is not None:
        raise RuntimeError(f"a training process of {procs} failed: {failure}") from failure
    ok = [v for status, v in got if status == "ok"]
    if not ok:
        raise RuntimeError(f"a training process of {procs} stopped without a result")
    return ok[0]


