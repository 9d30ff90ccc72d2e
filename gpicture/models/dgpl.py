"""Differential-gated progressive learning (DGPL): the weight β_t of the teacher loss.

β_t = 0 for the first two epochs (t = 0, 1). From epoch t = 2 on, c_r is the mean
linear CKA of the first layers' activations on a fixed probe batch between the ends
of epochs t-1 and t-2, and β_t = gate(c_r) = 0 if c_r < δ else 1 - exp(-γ (c_r - δ)):
the teacher's high-level targets are phased in once the student's early layers have
stopped changing fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from gpicture.models.cka import layerwise_cka


def gate(c_r: float, delta: float = 0.2, gamma: float = 10.0) -> float:
    """0 if c_r < delta, else 1 - exp(-gamma (c_r - delta)) (so 0 at c_r = delta)."""
    c_r = float(c_r)
    return 0.0 if c_r < delta else 1.0 - math.exp(-gamma * (c_r - delta))


class DifferentialGate:
    """Keeps the probe activations recorded at the ends of the last two epochs and
    turns them into β_t.

    Call ``record(epoch, activations)`` at the end of each epoch and ``beta(epoch)`` at
    the start of the next; ``state_dict()`` goes into the checkpoint so that a resumed
    run computes the same β.
    """

    def __init__(self, first_layers: int = 4, delta: float = 0.2, gamma: float = 10.0) -> None:
        if first_layers < 1:
            raise ValueError(f"DifferentialGate: first_layers must be >= 1, got {first_layers}")
        self.first_layers = first_layers
        self.delta = delta
        self.gamma = gamma
        self._records: dict[int, list[Tensor]] = {}
        self._last_c_r: float | None = None

    def record(self, epoch: int, activations: Sequence[Tensor]) -> None:
        """Store detached CPU copies of the first ``first_layers`` activations (each (n, C),
        rows = the probe batch's voxels) at the end of ``epoch``; keeps the last two epochs."""
        if len(activations) < self.first_layers:
            raise ValueError(f"DifferentialGate: need {self.first_layers} layers' activations, "
                             f"got {len(activations)}")
        self._records[int(epoch)] = [a.detach().to("cpu", copy=True) for a in activations[: self.first_layers]]
        for old in sorted(self._records)[:-2]:
            del self._records[old]

    def beta(self, epoch: int) -> float:
        """β for ``epoch``: 0 for epochs 0 and 1, else gate(mean CKA(epoch-1, epoch-2))."""
        if epoch < 2:
            return 0.0
        missing = [e for e in (epoch - 1, epoch - 2) if e not in self._records]
        if missing:
            raise RuntimeError(f"DifferentialGate: no probe activations recorded at the end of epoch(s) {missing} "
                               f"(have {sorted(self._records)}); record() every epoch")
        c_r = float(layerwise_cka(self._records[epoch - 1], self._records[epoch - 2]).mean())
        self._last_c_r = c_r
        return gate(c_r, self.delta, self.gamma)

    @property
    def last_c_r(self) -> float | None:
        """c_r of the last ``beta`` call from epoch 2 on (None before)."""
        return self._last_c_r

    def state_dict(self) -> dict[str, Any]:
        return {"first_layers": self.first_layers, "delta": self.delta, "gamma": self.gamma,
                "records": {e: list(acts) for e, acts in self._records.items()}, "last_c_r": self._last_c_r}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["first_layers"] != self.first_layers:
            raise ValueError(f"DifferentialGate: checkpoint recorded {state['first_layers']} layers, "
                             f"this run uses first_layers={self.first_layers}")
        self._records = {int(e): [a.detach().cpu() for a in acts] for e, acts in state["records"].items()}
        self._last_c_r = state["last_c_r"]
