"""The files a training run writes and reads: checkpoints and final models.

Written atomically (a temporary file renamed into place: never half a file), refused when they
hold NaN / inf (a poisoned checkpoint would only move the failure to the next stage), each with
its provenance; a full disk or an unwritable folder is one :class:`~gpicture.atomic.OutputError`
naming the file. Read back with errors that name the file for anything that is not a readable
PyTorch checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gpicture.atomic import OutputError
from gpicture.provenance import provenance
from gpicture.training.step import NonFiniteError


def load_weights(model: nn.Module, weights: dict[str, Tensor], path: Path) -> nn.Module:
    """``model`` with ``weights`` loaded strictly, in eval mode; ValueError naming ``path`` when
    they do not fit the model the checkpoint describes."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the model they describe ({str(exc).splitlines()[0]})") from None
    return model.eval()


def nonfinite_entries(obj: Any, prefix: str = "") -> list[str]:
    """Where (dotted keys) a nested dict / list / tuple of tensors holds NaN or inf, in one host sync."""
    found: list[tuple[str, Tensor]] = []

    def walk(o: Any, key: str) -> None:
        if isinstance(o, Tensor):
            if o.is_floating_point() or o.is_complex():
                found.append((key, o))
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(o, list | tuple):
            for j, v in enumerate(o):
                walk(v, f"{key}.{j}" if key else str(j))

    walk(obj, prefix)
    if not found:
        return []
    ok = torch.stack([torch.isfinite(t).all().cpu() for _, t in found])
    return [found[j][0] for j in (~ok).nonzero()[:, 0].tolist()]


def check_finite(obj: Any, path: Path, action: str) -> None:
    """NonFiniteError naming ``path``, the first offending entries and ``action`` (what the user
    can do) if ``obj`` holds NaN / inf tensors."""
    bad = nonfinite_entries(obj)
    if bad:
        shown = ", ".join(bad[:4]) + (f", ... ({len(bad)} in all)" if len(bad) > 4 else "")
        raise NonFiniteError(f"{path}: non-finite (NaN / inf) values in {shown}; {action}")


def save_atomic(obj: dict, path: Path) -> None:
    """``torch.save`` through a temporary file renamed into place (never a half-written file).
    Refuses (NonFiniteError, nothing written) an object holding NaN / inf tensors: a poisoned
    checkpoint would only move the failure to the next stage. Every file records what made it
    (``provenance``: git commit, Python, key package versions)."""
    check_finite(obj, path, "refusing to write it (nothing written)")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    sink = None
    try:
        with open(tmp, "wb") as f:
            sink = _Sink(f)
            torch.save({**obj, "provenance": provenance()}, sink)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        # a full disk, a read-only or vanished folder: one line naming the file (torch's zip writer
        # reports the file system's error as its own RuntimeError: the sink kept the original)
        cause = sink.error if sink is not None and sink.error is not None else exc
        if not isinstance(cause, OSError):
            raise
        raise OutputError(f"{path}: cannot be written ({cause.strerror or cause}); nothing of it was written, "
                          "an earlier file there is kept") from None
    finally:
        tmp.unlink(missing_ok=True)


class _Sink:
    """The file object ``torch.save`` writes to, keeping the OSError of a failed write."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def load_checkpoint_file(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load`` of a file this project wrote; ValueError naming ``path`` for anything that
    is not a readable PyTorch checkpoint (a text file, an empty or truncated file, a folder)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: a folder, not a checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such checkpoint file") from None
    except Exception as exc:  # noqa: BLE001  (pickle, zip and EOF errors of every kind)
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
