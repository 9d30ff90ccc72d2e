"""Worker pools that end cleanly on Ctrl-C and SIGTERM.

``gpicture`` turns SIGINT and SIGTERM into :class:`Interrupted` in the main process
(:func:`install_signal_handlers`, called by the CLI's entry point). The exception unwinds
every ``with`` block, so temporary outputs are removed on the way out, and the CLI exits
with 128 + the signal number (130 for SIGINT, 143 for SIGTERM). Further signals during
that unwinding are ignored, so a second Ctrl-C cannot interrupt the cleanup half-way.

Data-parallel training ranks (:mod:`gpicture.training.launch`, or ``torchrun``'s) cannot stop at
any bytecode: a rank that leaves mid-step strands its peers in a collective. There SIGINT and
SIGTERM only record a stop request (:func:`stop_at_steps`); the training loop calls
:func:`raise_if_stopped` before each step, so every rank stops at its next step boundary
(a rank whose peer stopped first sees its collective fail: :func:`stop_requested` tells the
caller that this failure is the interrupt).

The pools' workers ignore SIGINT (a terminal's Ctrl-C reaches the whole process group)
and die on SIGTERM. When the main process leaves a pool by an exception (an interrupt, a
bad frame, the consumer stopping early), :func:`pool_map` terminates the workers instead of
waiting for them, so nothing is left running and nothing hangs.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: unwind, clean up, exit with :attr:`exit_code`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def ignore_signals() -> None:
    """Ignore SIGINT and SIGTERM from now on (the cleanup after one, or a finished command's exit)."""
    for s in _SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def _raise_interrupted(signum: int, _frame: object) -> None:
    ignore_signals()  # the cleanup that follows must not be interrupted in turn
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` in this (main) process."""
    for s in _SIGNALS:
        signal.signal(s, _raise_interrupted)


_stop: list[int] = []  # the signal of the stop request, once one came (stop_at_steps)


def _record_stop(signum: int, _frame: object) -> None:
    if not _stop:
        _stop.append(signum)


def request_stop_at_steps() -> None:
    """From now on, in this process, SIGINT and SIGTERM record a stop request instead of raising
    (a training rank's whole life: the launcher's spawned ranks)."""
    for s in _SIGNALS:
        signal.signal(s, _record_stop)


@contextmanager
def stop_at_steps() -> Iterator[None]:
    """Within the block SIGINT / SIGTERM record a stop request (:func:`raise_if_stopped` turns it
    into :class:`Interrupted` at the next step); the previous handlers come back after it
    (a ``torchrun`` rank's training, inside the CLI's raising handlers)."""
    old = {s: signal.getsignal(s) for s in _SIGNALS}
    _stop.clear()  # a request belongs to the training it stopped, not to a later one in this process
    request_stop_at_steps()
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def stop_requested() -> int | None:
    """The signal number of the stop request this process received, None if none came."""
    return _stop[0] if _stop else None


def raise_if_stopped() -> None:
    """:class:`Interrupted` if a stop request came (a training loop's check before each step)."""
    if _stop:
        raise Interrupted(_stop[0])


def _worker_start(init: Callable[..., None] | None, init_args: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it terminates us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if init is not None:
        init(*init_args)


def _terminate(pool: ProcessPoolExecutor) -> None:
    # Python 3.11's executor has no public way to stop running workers (3.14 adds
    # terminate_workers); shutdown(wait=True) would wait for every queued frame.
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=3)
        if p.is_alive():
            p.kill()
            p.join(timeout=1)


def _executor(workers: int, init: Callable[..., None] | None, init_args: tuple,
              start_method: str | None) -> ProcessPoolExecutor:
    ctx = multiprocessing.get_context(start_method) if start_method else None
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_start,
                               initargs=(init, init_args))


def pool_map(fn: Callable[[Any], Any], items: list, workers: int, init: Callable[..., None] | None = None,
             init_args: tuple = (), chunksize: int = 1, start_method: str | None = None) -> Iterator[Any]:
    """``map(fn, items)`` over ``workers`` processes, results in order; the workers end with
    the generator, terminated if it ends by an exception (see the module docstring).
    ``init(*init_args)`` runs in each worker process (not on the serial path: one worker or
    one item runs ``fn`` here, where the caller has what ``init`` would set up)."""
    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    pool = _executor(min(workers, len(items)), init, init_args, start_method)
    try:
        yield from pool.map(fn, items, chunksize=chunksize)
    except BaseException:
        _terminate(pool)
        raise
    pool.shutdown(wait=True)


def pool_as_completed(fn: Callable[..., Any], jobs: Iterable[tuple], workers: int,
                      init: Callable[..., None] | None = None, init_args: tuple = (),
                      start_method: str | None = None) -> Iterator[tuple[int, Any]]:
    """``(i, fn(*jobs[i]))`` as each job finishes, over ``workers`` processes; the first job
    that raises ends the pool (the others are terminated) and its exception propagates."""
    jobs = list(jobs)
    if workers <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            yield i, fn(*job)
        return
    pool = _executor(min(workers, len(jobs)), init, init_args, start_method)
    try:
        pending: dict[Future, int] = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield pending.pop(fut), fut.result()
    except BaseException:
        _terminate(pool)
        raise
    pool.shutdown(wait=True)
