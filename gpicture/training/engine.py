"""The training engine shared by pre-training and fine-tuning.

AdamW (fused) with the one-cycle schedule of the paper's configs (momentum cycled 0.95 ->
0.85, warm-up fraction ``pct_start``, ``div_factor``), gradient-norm clipping, an atomic
checkpoint at the end of every epoch and exact resume from it, DDP under ``torchrun``
(gloo on CPU, NCCL on GPU), dvclive metrics and plots, and a progress bar. Randomness
inside a step comes from a generator seeded by (seed, epoch, frame), so a resumed or
distributed run draws the same masks as an uninterrupted one.

On CUDA: AMP (bf16 where the GPU has it, else fp16 with a GradScaler), batches pinned by
the DataLoader's pin-memory thread and copied with ``non_blocking``, ``torch.compile`` of
the set-attention layers as an option (``compile``), and a step without host syncs
(:mod:`gpicture.training.step`): metrics and the finite-value guard stay on the device and
the host reads them every ``log_every`` steps and at the end of each epoch.

SIGTERM / SIGINT in a data-parallel rank (:mod:`gpicture.training.launch`) stop the loop before
the next step, on every rank; the run then ends with :class:`~gpicture.workers.Interrupted` and
writes no final model. The checkpoint files themselves: :mod:`gpicture.training.checkpoints`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as tdist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from gpicture.atomic import OutputError
from gpicture.data.batch import VoxelBatch
from gpicture.params import Section
from gpicture.provenance import provenance
from gpicture.training.checkpoints import (  # noqa: F401  (re-exported: the engine's checkpoint files)
    check_finite,
    load_checkpoint_file,
    load_weights,
    nonfinite_entries,
    save_atomic,
)
from gpicture.training.step import NonFiniteError, TrainStep, compile_model  # noqa: F401  (NonFiniteError re-exported)
from gpicture.workers import Interrupted, raise_if_stopped, stop_requested

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
RUNTIME_KEYS = ("compile", "pin_memory", "log_every")  # how a run goes, not what it computes: not compared on resume


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (a ``pretrain`` / ``finetune`` section of params.yaml)."""

    epochs: int
    batch_size: int  # frames per process
    lr: float
    weight_decay: float
    moms: tuple[float, float] = (0.95, 0.85)
    pct_start: float = 0.4
    div_factor: float = 10.0
    grad_clip: float = 35.0
    seed: int = 0
    num_workers: int = 0
    amp: bool = True  # CUDA only: bf16 autocast where the GPU has bf16 (Ampere, Hopper), else fp16 + GradScaler
    compile: bool = False  # torch.compile the set-attention layers (pays on CUDA; minutes of compiling on a CPU)
    pin_memory: bool = True  # CUDA only: pinned batches, copied to the GPU with non_blocking
    log_every: int = 50  # steps between host syncs (metrics, the finite-value check, the progress bar)

    def __post_init__(self) -> None:
        # built in code (tests, benchmarks); from params.yaml, from_section has checked each key already.
        # epochs 0 (the initial weights, written as the run's model) only from code: params and --epochs need >= 1
        for name, least in (("epochs", 0), ("batch_size", 1), ("num_workers", 0), ("seed", 0), ("log_every", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"TrainConfig.{name} must be an integer >= {least}, got {value!r}")
        if not (self.lr > 0 and self.div_factor > 0 and self.grad_clip > 0 and self.weight_decay >= 0
                and 0 < self.pct_start < 1 and len(self.moms) == 2):
            raise ValueError(f"TrainConfig: lr, div_factor, grad_clip must be > 0, weight_decay >= 0, pct_start in "
                             f"(0, 1), moms two values; got {self}")

    @classmethod
    def from_section(cls, sec: Section, epochs: int | None = None, batch_size: int | None = None) -> TrainConfig:
        """From a params section (``pretrain``, ``finetune.<task>``), each key checked where it is
        read (a bad value: ParamsError naming the file and key); ``epochs`` / ``batch_size``, when
        given, override their keys and are reported as ``--epochs`` / ``--batch-size``."""
        return cls(
            epochs=sec.integer("epochs", 1, override=epochs, option="--epochs"),
            batch_size=sec.integer("batch_size", 1, override=batch_size, option="--batch-size"),
            lr=sec.positive("lr"), weight_decay=sec.number("weight_decay", 0.0),
            moms=sec.numbers("moms", 0.0, 1.0, length=2),  # type: ignore[arg-type]
            pct_start=sec.number("pct_start", 0.0, 1.0, low_open=True, high_open=True),
            div_factor=sec.positive("div_factor"), grad_clip=sec.positive("grad_clip"),
            seed=sec.integer("seed", 0, default=0), num_workers=sec.integer("num_workers", 0, default=0),
            amp=sec.flag("amp", default=True), compile=sec.flag("compile", default=False),
            pin_memory=sec.flag("pin_memory", default=True), log_every=sec.integer("log_every", 1, default=50))

    def defining(self) -> dict[str, Any]:
        """The settings a checkpoint must have been written under to be resumed (not the runtime keys)."""
        return {k: v for k, v in asdict(self).items() if k not in RUNTIME_KEYS}


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None = None) -> DistInfo:
    """Join the process group torchrun set up (WORLD_SIZE > 1), else a single process.
    The device is CUDA when present (one GPU per local rank), else the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


class Hooks(Protocol):
    """Per-epoch callbacks with state saved in the checkpoint (e.g. DGPL's probe history)."""

    def epoch_start(self, epoch: int) -> dict[str, float]: ...
    def epoch_end(self, epoch: int, model: nn.Module) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class StepContext:
    epoch: int
    step: int  # global step
    epoch_state: dict[str, float]  # what epoch_start returned (e.g. beta)
    device: torch.device


StepFn = Callable[[nn.Module, Any, StepContext], tuple[Tensor, dict[str, float | Tensor]]]


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def run_key(**parts: Any) -> str:
    """A digest of everything that defines a training run (checkpoints resume only under it)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def batch_frame_index(batch: Any) -> list[int]:
    """Store indices of a batch's frames (its ``voxels``, a :class:`VoxelBatch`, what every batch
    of this project carries; the host copy, so reading them costs no device sync)."""
    voxels = getattr(batch, "voxels", batch)
    return voxels.frame_index.tolist() if isinstance(voxels, VoxelBatch) else []


def map_tensors(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``obj`` with ``fn`` applied to every tensor in it (batch dataclasses, lists, tuples, dicts)."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, list | tuple):
        return type(obj)(map_tensors(v, fn) for v in obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: map_tensors(getattr(obj, f.name), fn)
                                           for f in dataclasses.fields(obj) if f.init})
    return obj


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` on ``device``; from pinned memory the copies are asynchronous (no host wait)."""
    if device.type == "cpu":
        return batch
    return map_tensors(batch, lambda t: t.to(device, non_blocking=True))


class Pinned:
    """A collated batch the DataLoader's pin-memory thread can pin (it pins only tensors,
    mappings, sequences and objects with a ``pin_memory`` method, not dataclasses)."""

    __slots__ = ("batch",)

    def __init__(self, batch: Any) -> None:
        self.batch = batch

    def pin_memory(self) -> Pinned:
        return Pinned(map_tensors(self.batch, Tensor.pin_memory))


@dataclass(frozen=True)
class PinningCollate:
    """``collate`` whose batches come back as :class:`Pinned` (picklable for DataLoader workers)."""

    collate: Callable[[list], Any]

    def __call__(self, items: list) -> Pinned:
        return Pinned(self.collate(items))


def fit(model: nn.Module, dataset: Dataset, collate: Callable[[list], Any], step_fn: StepFn, cfg: TrainConfig,
        out_dir: Path, dist: DistInfo, hooks: Hooks | None = None, resume: bool = True,
        stop_after_epochs: int | None = None, progress: bool = True, run_key: str = "",
        frame_ids: Sequence[str] | None = None) -> dict[str, float]:
    """Train ``model`` for ``cfg.epochs`` epochs (resuming from ``out_dir/checkpoint.pt``).

    ``step_fn`` returns the loss to back-propagate and scalars to log. Returns the
    last epoch's mean metrics. ``stop_after_epochs`` ends this run early (tests of resume).
    ``run_key`` identifies everything that defines the run (data, model, settings): a
    checkpoint written under another key (say, before `dvc exp run -S ...` changed a
    parameter) is never resumed.

    The first step whose loss or gradient norm is NaN / inf stops the run with a
    NonFiniteError naming the epoch, the step and the batch's frames (``frame_ids``: the
    store's ids, indexed by the batches' ``voxels.frame_index``); neither it nor any later
    step moves the weights, and no checkpoint of that epoch is written. The check runs on
    the device (:class:`~gpicture.training.step.TrainStep`): the error comes at the next
    host sync, within ``cfg.log_every`` steps and at the latest at the epoch's end. Under
    fp16 AMP an infinite gradient is the scaler's business (it skips the step and lowers
    the scale), so only the loss is checked there. A resumed checkpoint with non-finite
    tensors is refused.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = model.to(dist.device)
    cuda = dist.device.type == "cuda"
    pin = cfg.pin_memory and cuda
    sampler = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=False)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                        collate_fn=PinningCollate(collate) if pin else collate, pin_memory=pin,
                        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    steps_per_epoch = len(loader)
    if cfg.compile:
        compiled = compile_model(model)
        if dist.is_main:
            log.info("torch.compile: %d set-attention layers (compiled at their first step)", compiled)
    ddp = DistributedDataParallel(model, device_ids=[dist.device] if cuda else None) \
        if dist.world_size > 1 else model
    trainer = TrainStep(ddp, cfg.lr, cfg.weight_decay, cfg.moms, cfg.pct_start, cfg.div_factor, cfg.grad_clip,
                        cfg.epochs * steps_per_epoch, dist.device, amp=cfg.amp, window=cfg.log_every,
                        world_size=dist.world_size, frame_ids=frame_ids)
    start_epoch = 0
    ckpt_path = out_dir / CHECKPOINT
    state = load_checkpoint_file(ckpt_path, dist.device) if resume and ckpt_path.exists() else None
    if state is not None and not isinstance(state, dict):
        raise ValueError(f"{ckpt_path}: not a training checkpoint; remove it or pass --no-resume")
    if state is not None:
        check_finite(state, ckpt_path, "not resuming from it: remove it or pass --no-resume")
    written = None if state is None else {k: v for k, v in (state.get("config") or {}).items() if k not in RUNTIME_KEYS}
    if state is not None and (state.get("run_key") != run_key or written != cfg.defining()):
        if dist.is_main:
            log.warning("%s was written for another run (data, model or settings differ): starting afresh", ckpt_path)
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        trainer.opt.load_state_dict(state["optimizer"])
        trainer.sched.load_state_dict(state["scheduler"])
        if state.get("scaler"):  # empty when written without fp16 (bf16, fp32)
            trainer.scaler.load_state_dict(state["scaler"])
        if hooks is not None and state.get("hooks") is not None:
            hooks.load_state_dict(state["hooks"])
        start_epoch = int(state["epoch"]) + 1
        if dist.is_main:
            log.info("resuming from %s after epoch %d", ckpt_path, start_epoch - 1)
    live = None
    if dist.is_main:
        from dvclive import Live

        with _logs_written(out_dir):
            live = Live(dir=str(out_dir / "dvclive"), resume=start_epoch > 0, save_dvc_exp=False, dvcyaml=None)
        live.summary["provenance"] = provenance()  # the run's metrics.json says what made it
    bar = _progress(progress and dist.is_main, cfg.epochs * steps_per_epoch, start_epoch * steps_per_epoch)
    last: dict[str, float] = {}
    epochs_run = 0
    try:
        for epoch in range(start_epoch, cfg.epochs):
            sampler.set_epoch(epoch)
            at_epoch = f"{out_dir}: epoch {epoch + 1}/{cfg.epochs}"
            _stop_if_asked(dist, f"{at_epoch} (its start)")  # also around the hooks, which can take seconds
            epoch_state = hooks.epoch_start(epoch) if hooks is not None else {}
            _stop_if_asked(dist, f"{at_epoch} (its first step)")
            ddp.train()
            trainer.reset()
            t_epoch = time.perf_counter()
            for i, item in enumerate(loader):
                host = item.batch if isinstance(item, Pinned) else item
                ctx = StepContext(epoch=epoch, step=epoch * steps_per_epoch + i, epoch_state=epoch_state, device=dist.device)
                where = (f"{out_dir}: epoch {epoch + 1}/{cfg.epochs}, step {i + 1}/{steps_per_epoch} "
                         f"(global step {ctx.step})")
                _stop_if_asked(dist, where)  # a training rank's SIGTERM / SIGINT: stop here, between steps
                trainer.step(step_fn, to_device(host, dist.device), ctx, where, batch_frame_index(host))
                if trainer.pending >= cfg.log_every or i == steps_per_epoch - 1:
                    window = trainer.sync()  # the host's only look at the device; raises at a non-finite step
                    if bar is not None:
                        bar.update(window.steps, f"epoch {epoch + 1}/{cfg.epochs} loss {window.last_loss:.4f}")
            last = trainer.means()
            # training frames per second of the epoch's loop, all processes together (data, steps; not the hooks)
            last["frames_per_s"] = len(sampler) * dist.world_size / max(time.perf_counter() - t_epoch, 1e-9)
            last.update(epoch_state)
            last["lr"] = float(trainer.sched.get_last_lr()[0])
            _stop_if_asked(dist, f"{at_epoch} (its end hooks; the epoch is not checkpointed)")
            if hooks is not None:
                last.update(hooks.epoch_end(epoch, unwrap(ddp)))
            _stop_if_asked(dist, f"{at_epoch} (its checkpoint; the epoch is not checkpointed)")
            if dist.world_size > 1:
                tdist.barrier()
            if dist.is_main:
                snapshot = {"model": unwrap(ddp).state_dict(), "optimizer": trainer.opt.state_dict(),
                            "scheduler": trainer.sched.state_dict(), "scaler": trainer.scaler.state_dict(), "epoch": epoch,
                            "config": asdict(cfg), "run_key": run_key,
                            "hooks": hooks.state_dict() if hooks is not None else None}
                check_finite(snapshot, ckpt_path, f"after epoch {epoch + 1}/{cfg.epochs} the training diverged (weights or "
                                                  "the epoch's probe statistics overflowed: lower the learning rate, check "
                                                  "the data); not written, the previous checkpoint is kept")
                save_atomic(snapshot, ckpt_path)
                with _logs_written(out_dir):
                    for k, v in last.items():
                        live.log_metric(k, v)
                    live.next_step()
            epochs_run += 1
            if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
                break
        raise_if_stopped()  # a stop request during the last epoch's end: the run is interrupted, not finished
    finally:
        if bar is not None:  # cleared, also when the run stops: an error message starts its own line
            bar.close()
    if live is not None:
        live.end()
    return last


def _stop_if_asked(dist: DistInfo, where: str) -> None:
    """:class:`Interrupted` with a log line when this training rank was asked to stop
    (:func:`gpicture.workers.stop_at_steps`): before the step ``where``."""
    signum = stop_requested()
    if signum is not None:
        log.warning("process %d of %d: stopped by %s before %s; the last finished epoch's checkpoint is kept",
                    dist.rank, dist.world_size, signal.Signals(signum).name, where)
        raise Interrupted(signum)


@contextmanager
def _logs_written(out_dir: Path) -> Iterator[None]:
    """dvclive's writes: an OSError (a full disk) as one line naming the file (OutputError)."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"{exc.filename or out_dir / 'dvclive'}: cannot be written ({exc.strerror or exc})") from None


class _Bar:
    def __init__(self, total: int, done: int) -> None:
        from tqdm import tqdm

        self.t = tqdm(total=total, initial=done, unit="step", dynamic_ncols=True, leave=False)

    def update(self, n: int, text: str) -> None:
        self.t.set_description_str(text, refresh=False)
        self.t.update(n)

    def close(self) -> None:
        self.t.close()


def _progress(enabled: bool, total: int, done: int) -> _Bar | None:
    return _Bar(total, done) if enabled else None
