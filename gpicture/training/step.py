"""One training step without a host sync, and what makes it fast on CUDA.

:class:`TrainStep` is the optimiser step of :func:`gpicture.training.engine.fit` (and of
``benchmarks/gpu_check.py``, which times and sync-counts the same object): autocast (bf16
on a GPU that computes it natively, Ampere and Hopper; fp16 with a ``GradScaler``
elsewhere; fp32 on the CPU), backward, gradient-norm clipping and a fused AdamW step.

Why no host sync: a CUDA step that reads a value back (``float(loss)``, an ``if`` on a
tensor) waits for the GPU to drain, and the host cannot queue the next step's kernels
meanwhile. So the step keeps everything it reports on the device and the host reads it
only every ``log_every`` steps and at the end of an epoch (:meth:`TrainStep.sync`, one
device-to-host copy):

- the loss and gradient norm of each step go into a device buffer of the window;
- a step whose loss (or gradient norm) is NaN / inf sets, on the device, the index of
  the first bad step (``first_bad``); from then on every step is a no-op for the
  optimiser: the fused AdamW kernel takes ``found_inf`` (the flag GradScaler uses) and
  leaves the weights, both moments and the step count untouched, so the weights stay
  those from before the first bad step;
- at the next sync the host sees ``first_bad`` and raises :class:`NonFiniteError` naming
  the epoch, step and frames of that step, from a host-side ring of the window's steps.
  Under DDP the flag, the losses and the frames of that step are reduced over the
  processes, so every process raises the same message naming the process at fault.

Under fp16 a non-finite gradient is the scaler's business (an overflow: that step alone
is skipped and the scale lowered), so only the loss is checked there.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from gpicture.models.dsvt.layers import SetAttentionLayer

NONE = 2**62  # `first_bad` when every step so far was finite (exact in float64)


class NonFiniteError(ValueError):
    """A NaN / inf loss or gradient in training, or non-finite tensors in a checkpoint."""


def amp_dtype(enabled: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a training step on ``device``: bf16 on a CUDA device that has
    bf16 arithmetic (compute capability 8.0 on, Hopper included), else fp16; None (fp32)
    when ``enabled`` is False or on the CPU (AMP is a CUDA speed-up here)."""
    if not enabled or device.type != "cuda":
        return None
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch without the argument
        native = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if native else torch.float16


def compile_model(model: nn.Module) -> int:
    """``torch.compile`` (dynamic shapes) every DSVT set-attention layer of ``model`` in
    place; returns how many. The layers are the dense part of the step (projections,
    attention over (sets, set_size) slots, LayerNorm, feed-forward), where fusing the
    element-wise work pays; the partitions around them have data-dependent shapes that
    compile to nothing better, so they stay eager."""
    layers = [m for m in model.modules() if isinstance(m, SetAttentionLayer)]
    for m in layers:
        m.compile(dynamic=True)
    return len(layers)


@dataclass
class WindowReport:
    """What one :meth:`TrainStep.sync` read: the steps since the last sync."""

    steps: int
    loss: float  # mean loss of those steps
    last_loss: float


@dataclass
class _Seen:
    step: int  # global step
    where: str  # "<out>: epoch e/E, step i/I (global step s)"
    frames: list[int]  # store indices of the batch's frames


class TrainStep:
    """The optimiser, scheduler and scaler of a run and its step (module docstring).

    ``step_fn(model, batch, ctx)`` returns the loss and scalars (floats or 0-d tensors) to
    log; ``model`` is what it gets (a DDP wrapper or the module). ``frame_ids`` name the
    store indices a step reports in an error."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float, moms: tuple[float, float], pct_start: float,
                 div_factor: float, grad_clip: float, total_steps: int, device: torch.device, amp: bool = True,
                 window: int = 50, world_size: int = 1, frame_ids: Sequence[str] | None = None) -> None:
        self.model, self.device, self.grad_clip, self.world_size = model, device, grad_clip, world_size
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay, betas=(moms[0], 0.99), fused=True)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            self.opt, max_lr=lr, total_steps=max(total_steps, 1), pct_start=pct_start, div_factor=div_factor,
            base_momentum=moms[1], max_momentum=moms[0], cycle_momentum=True)
        self.dtype = amp_dtype(amp, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        self.window = max(int(window), 1)
        self.frame_ids = frame_ids
        self.host_syncs = 0  # device-to-host reads this object made (one per sync)
        self.first_bad = torch.full((), NONE, dtype=torch.int64, device=device)
        self._loss = torch.zeros(self.window, device=device)
        self._norm = torch.zeros(self.window, device=device)
        self._ring: deque[_Seen] = deque(maxlen=self.window)
        self.sums: dict[str, Tensor] = {}  # device sums of the tensor metrics since reset()
        self.host_sums: dict[str, float] = {}  # sums of the float metrics and of loss / grad_norm
        self.steps_summed = 0

    @property
    def pending(self) -> int:
        """Steps since the last sync."""
        return len(self._ring)

    def reset(self) -> None:
        """Start new metric sums (an epoch)."""
        self.sums, self.host_sums, self.steps_summed = {}, {}, 0

    def step(self, step_fn: Callable[[nn.Module, Any, Any], tuple[Tensor, dict[str, Any]]], batch: Any, ctx: Any,
             where: str, frames: list[int]) -> None:
        """One step on ``batch`` (already on the device): no host sync unless the model or
        ``step_fn`` make one. ``where`` and ``frames`` are what an error names; call
        :meth:`sync` once :attr:`pending` reaches the window."""
        if self.pending >= self.window:
            raise RuntimeError("TrainStep: sync() before more steps than the window")
        k = self.pending
        self._ring.append(_Seen(int(ctx.step), where, list(frames)))
        with torch.autocast(device_type=self.device.type, dtype=self.dtype or torch.float32,
                            enabled=self.dtype is not None):
            loss, metrics = step_fn(self.model, batch, ctx)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)  # no-op unless fp16
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip).detach().float().to(self.device)
        loss_d = loss.detach().float().reshape(())
        bad = ~torch.isfinite(loss_d)
        if self.dtype != torch.float16:
            bad = bad | ~torch.isfinite(norm)
        self.first_bad = torch.where(bad & (self.first_bad == NONE), int(ctx.step), self.first_bad)
        skip = self.first_bad != NONE
        if self.dtype == torch.float16:
            skip = skip | ~torch.isfinite(norm)  # overflow: the scaler lowers its scale, this step is skipped
        self.opt.grad_scale = None  # gradients are unscaled already
        self.opt.found_inf = skip.float()  # the fused kernel leaves weights, moments and step count as they are
        self.opt.step()
        self.scaler.update()
        self.sched.step()
        self._loss[k] = loss_d
        self._norm[k] = norm
        for name, v in metrics.items():
            if isinstance(v, Tensor):
                self.sums[name] = self.sums.get(name, 0.0) + v.detach().float().mean()
            else:
                self.host_sums[name] = self.host_sums.get(name, 0.0) + float(v)
        self.steps_summed += 1

    def sync(self) -> WindowReport:
        """Read the window and the metric sums in one device-to-host copy; NonFiniteError if a
        step of the window was non-finite. Under DDP every process calls it at the same step."""
        n = self.pending
        first = self.first_bad.clone()
        if self.world_size > 1:
            tdist.all_reduce(first, op=tdist.ReduceOp.MIN)
        names = list(self.sums)
        parts = [first.double().view(1), self._loss[:n].double(), self._norm[:n].double()]
        vals = torch.cat(parts + [self.sums[k].double().view(1) for k in names]).tolist()
        self.host_syncs += 1
        losses, norms = vals[1:1 + n], vals[1 + n:1 + 2 * n]
        if int(vals[0]) != NONE:
            raise self._error(int(vals[0]), losses, norms)
        for name, v in zip(names, vals[1 + 2 * n:], strict=True):
            self.host_sums[name] = self.host_sums.get(name, 0.0) + v
        self.sums = {}
        self.host_sums["loss"] = self.host_sums.get("loss", 0.0) + sum(losses)
        self.host_sums["grad_norm"] = self.host_sums.get("grad_norm", 0.0) + sum(norms)
        self._ring.clear()
        return WindowReport(n, sum(losses) / max(n, 1), losses[-1] if losses else float("nan"))

    def means(self) -> dict[str, float]:
        """Mean of every metric over the steps since :meth:`reset` (read at the last sync): loss
        and grad_norm first."""
        keys = ["loss", "grad_norm"] + [k for k in self.host_sums if k not in ("loss", "grad_norm")]
        return {k: self.host_sums[k] / max(self.steps_summed, 1) for k in keys if k in self.host_sums}

    def _names(self, frames: list[int]) -> list[str]:
        ids = self.frame_ids
        return [ids[k] if ids is not None and 0 <= k < len(ids) else f"#{k}" for k in frames]

    def _error(self, first: int, losses: list[float], norms: list[float]) -> NonFiniteError:
        """The error naming the first non-finite step of the window (all processes agree on it)."""
        seen = [s for s in self._ring if s.step == first]
        if not seen:
            raise RuntimeError(f"TrainStep: first non-finite step {first} is not in the window")
        k = list(self._ring).index(seen[0])
        loss, norm, frames = losses[k], norms[k], self._names(seen[0].frames)
        shared = ""
        if self.world_size > 1:
            loss, frames, shared = self._gather_culprit(seen[0], loss, frames)
        finite_loss = loss == loss and abs(loss) != float("inf")
        what = f"loss {loss}" if not finite_loss else f"gradient norm {norm} (loss {loss})"
        return NonFiniteError(f"{seen[0].where}: non-finite {what} on frames {frames}{shared}; stopped before the "
                              "optimiser step, no checkpoint written for this epoch (check those frames' points and "
                              "teacher features, or lower the learning rate)")

    def _gather_culprit(self, seen: _Seen, loss: float, frames: list[str]) -> tuple[float, list[str], str]:
        """Under DDP: every process's loss and frames at the step; the first process whose loss
        is non-finite is named, else (a gradient norm: averaged over all) every process's frames."""
        w, rank = self.world_size, tdist.get_rank()
        width = 1 + max(len(seen.frames), 1)
        row = torch.zeros(w, width + 1, dtype=torch.float64, device=self.device)
        row[rank, 0] = loss
        row[rank, 1] = len(seen.frames)
        row[rank, 2:2 + len(seen.frames)] = torch.tensor(seen.frames, dtype=torch.float64)
        size = torch.tensor([width], device=self.device)
        tdist.all_reduce(size, op=tdist.ReduceOp.MAX)  # batches may differ in size at an epoch's end
        if int(size) != width:
            row = torch.cat([row, row.new_zeros(w, int(size) - width)], 1)
        tdist.all_reduce(row)
        table = row.cpu().tolist()
        per_rank = [(r[0], self._names([int(v) for v in r[2:2 + int(r[1])]])) for r in table]
        bad = [r for r, (v, _) in enumerate(per_rank) if not (v == v and abs(v) != float("inf"))]
        if bad:
            return per_rank[bad[0]][0], per_rank[bad[0]][1], f" (process {bad[0]} of {w})"
        every = [f for _, fr in per_rank for f in fr]
        return loss, every, (f" (every process's: gradients are averaged over the {w} processes, so the frames at "
                             "fault may be any of them)")
