"""Loading SLidR / Seal MinkUNet checkpoints, strictly.

Accepted: ``.pt`` / ``.pth`` files holding the weights at top level or under
``state_dict`` or ``model_points``, with key prefixes ``model_points.``, ``model.``,
``module.`` and ``encoder.`` (in any combination) removed. Every tensor of the network
must be provided with the right shape; otherwise the checkpoint is refused with the
missing, unexpected and mismatched keys listed (the original code skipped them silently).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from gpicture.provenance import provenance

PREFIXES = ("model_points.", "model.", "module.", "encoder.")
CONTAINERS = ("state_dict", "model_points")
METADATA_KEY = "gpicture_teacher"  # what a checkpoint written by `gpicture teacher-fit` says about itself


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the network."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(path: Path, state_dict: dict[str, torch.Tensor], metadata: dict) -> str:
    """Write weights (Seal's layout, under ``state_dict``) with ``metadata`` beside them,
    atomically; returns the file's sha256. Refuses non-finite weights."""
    bad = nonfinite_keys(state_dict)
    if bad:
        raise CheckpointError(f"{path}: refusing to write non-finite weights ({', '.join(bad[:4])})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save({"state_dict": state_dict, METADATA_KEY: metadata, "provenance": provenance()}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return file_sha256(path)


def nonfinite_keys(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The keys of the floating-point tensors that hold a NaN or an infinity (one host sync)."""
    names = [k for k, v in state_dict.items() if v.is_floating_point() or v.is_complex()]
    if not names:
        return []
    ok = torch.stack([torch.isfinite(state_dict[k]).all().cpu() for k in names])
    return [names[i] for i in (~ok).nonzero()[:, 0].tolist()]


def check_finite_weights(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """CheckpointError naming ``path`` and the first offending tensors when any weight is NaN
    or infinite: such a teacher gives NaN features for (almost) every voxel."""
    bad = nonfinite_keys(state_dict)
    if bad:
        shown = ", ".join(bad[:4]) + (f", ... ({len(bad)} tensors in all)" if len(bad) > 4 else "")
        raise CheckpointError(f"{path}: non-finite weights (NaN or inf) in {shown}; the checkpoint is damaged "
                              "(or its training diverged): use another one")


def strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint file, unwrapped and with prefixes removed."""
    return read_checkpoint(path)[0]


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The weights of a checkpoint file (unwrapped, prefixes removed) and the metadata
    ``gpicture teacher-fit`` stores beside them (key ``gpicture_teacher``; None in Seal's
    and SLidR's own files). Weights holding NaN or inf are refused (CheckpointError naming the file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (corrupt zip, not a pickle, foreign objects)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
    meta = obj.get(METADATA_KEY) if isinstance(obj, dict) else None
    for name in CONTAINERS:
        if isinstance(obj, dict) and isinstance(obj.get(name), dict):
            obj = obj[name]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state dict (top level, 'state_dict' or 'model_points')")
    weights = {strip_prefixes(k): v for k, v in obj.items()}
    check_finite_weights(path, weights)
    return weights, meta if isinstance(meta, dict) else None


def check_layout(path: Path, given: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Raise CheckpointError listing every missing, unexpected and mismatched key."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = sorted(
        f"{k}: {tuple(given[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in set(given) & set(expected) if tuple(given[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{label} {len(items)}: {shown}")
        raise CheckpointError(f"{path}: does not fit Res16UNet34C (in 1, out 64): " + "; ".join(parts))
