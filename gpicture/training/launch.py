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

SIGTERM / SIGINT (a cluster scheduler's, a Ctrl-C): the launching process forwards the signal
to its ranks and waits :data:`GRACE_S` seconds for them, then kills what is left (SIGKILL), and
raises :class:`~gpicture.workers.Interrupted` (the CLI exits 143 / 130). Each rank, here or
under ``torchrun`` (which forwards the signal to every rank itself), only records the request
and stops before its next step (:func:`gpicture.workers.stop_at_steps`); any failure after the
request (a peer that stopped first breaks the collective this rank waits in) is the interrupt
too. An interrupted run writes no final model: the checkpoint of its last finished epoch stays,
and the next run resumes from it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from gpicture.atomic import signals_deferred
from gpicture.training.engine import setup_distributed
from gpicture.workers import (
    Interrupted,
    raise_if_stopped,
    request_stop_at_steps,
    stop_at_steps,
    stop_requested,
)

log = logging.getLogger(__name__)
EXPECTED = (ValueError, OSError)  # bad input: reported to the user as one clear error
GRACE_S = 5.0  # after forwarding SIGTERM / SIGINT: seconds the ranks get to stop at their next step, then SIGKILL


def error_message(exc: BaseException) -> str:
    """One line for a bad-input error: an OSError as ``<path>: <problem>`` (a full disk in a
    library's write names the file it was writing), anything else its own message."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename and type(exc).__str__ is OSError.__str__:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, fn: Callable[..., Any], args: tuple, procs: int, port: int, results: Any) -> None:
    request_stop_at_steps()  # SIGTERM / SIGINT: stop before the next step (module docstring)
    # the launcher started us with both signals blocked (so none is lost while it records our pid): let them in
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(procs), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    try:
        dist = setup_distributed()
        out = fn(dist, *args)
        raise_if_stopped()
        if rank == 0:
            results.put(("ok", out))
    except BaseException as exc:
        signum = stop_requested()
        if signum is not None:  # stopped, or failed in a collective a stopped peer left: the interrupt
            raise SystemExit(128 + signum) from None
        if isinstance(exc, EXPECTED):
            results.put(("error", (type(exc).__name__, error_message(exc))))
            raise SystemExit(2) from None
        raise
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()


def _stop_ranks(processes: list, signum: int, grace: float = GRACE_S) -> None:
    """Forward ``signum`` to the ranks still running, give them ``grace`` seconds to stop at
    their next step, then SIGKILL the rest; returns when none is left."""
    for p in processes:
        if p is not None and p.is_alive():
            try:
                os.kill(p.pid, signum)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for p in processes:
        if p is not None:
            p.join(max(0.0, deadline - time.monotonic()))
    for rank, p in enumerate(processes):
        if p is not None and p.is_alive():
            log.warning("process %d of %d (pid %d) did not stop within %.0f s of %s: killed", rank, len(processes),
                        p.pid, grace, signal.Signals(signum).name)
            p.kill()
            p.join(5)


def _under_torchrun(fn: Callable[..., Any], args: tuple) -> Any:
    """``fn`` as one rank of a ``torchrun`` launch: SIGTERM / SIGINT stop it before its next step."""
    with stop_at_steps():
        try:
            out = fn(setup_distributed(), *args)
            raise_if_stopped()
            return out
        except BaseException:
            signum = stop_requested()
            if signum is not None:
                raise Interrupted(signum) from None
            raise


def launch(fn: Callable[..., Any], args: tuple, procs: int = 1) -> Any:
    """``fn(dist, *args)`` on ``procs`` processes (module docstring); rank 0's return value."""
    if procs < 1:
        raise ValueError(f"procs must be >= 1, got {procs}")
    if torch.cuda.is_available():
        procs = min(procs, torch.cuda.device_count())  # one GPU per process
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _under_torchrun(fn, args)
    if procs == 1 or "WORLD_SIZE" in os.environ:
        return fn(setup_distributed(), *args)
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    failure: Exception | None = None
    ranks = None
    try:
        with signals_deferred():  # a signal now waits until we hold the ranks' handles (and they their handlers)
            ranks = mp.start_processes(_rank_main, args=(fn, args, procs, _free_port(), results), nprocs=procs,
                                       start_method="spawn", join=False)
        while not ranks.join(grace_period=GRACE_S):
            pass
    except (mp.ProcessExitedException, mp.ProcessRaisedException) as exc:
        failure = exc  # the other ranks are stopped; an expected error of one of them is in the queue
    except KeyboardInterrupt as exc:  # Interrupted (the CLI's SIGINT / SIGTERM) or a plain Ctrl-C outside the CLI
        _stop_ranks(ranks.processes if ranks is not None else [], getattr(exc, "signum", signal.SIGINT))
        raise
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


