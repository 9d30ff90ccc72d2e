"""CKA-derived reconstruction weights: alpha_l = mean over fine-tuned models of the linear
CKA between the pre-trained and the fine-tuned student's layer-l activations on a fixed
probe batch (the paper's CKA-guided hierarchy). The fine-tuned students are read out of the
pipeline's own task models (``models/<task>/<dataset>/model.pt``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gpicture.data.batch import collate_frames
from gpicture.data.store import VoxelStore
from gpicture.models.cka import linear_cka
from gpicture.models.student import Student, StudentConfig
from gpicture.training.engine import load_weights


def load_student(path: Path, store_attrs: dict[str, Any]) -> Student:
    """The student of a checkpoint: a pre-trained ``student.pt`` (its ``student`` weights) or a
    fine-tuned task model (``model.pt`` of ``gpicture finetune``: the ``student.``-prefixed
    part of its ``state``), each with its ``model_params``. ValueError naming ``path`` for any
    other file or weights that do not fit."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001  (pickle and zip errors of every kind)
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from None
    if not isinstance(state, dict) or "model_params" not in state:
        raise ValueError(f"{path}: not a gpicture student or fine-tuned model checkpoint")
    if "student" in state:
        weights = state["student"]
    elif isinstance(state.get("state"), dict) and str(state.get("format", "")).startswith("gpicture-"):
        weights = {k[len("student."):]: v for k, v in state["state"].items() if k.startswith("student.")}
        if not weights:
            raise ValueError(f"{path}: a {state['format']} model without student weights")
    else:
        raise ValueError(f"{path}: not a gpicture student or fine-tuned model checkpoint")
    return load_weights(Student(StudentConfig.from_params(state["model_params"], store_attrs)), weights, path)


@torch.no_grad()
def layer_activations(model: Student, store: VoxelStore, frames: int) -> list[torch.Tensor]:
    b = collate_frames([store[i] for i in range(min(frames, len(store)))], list(model.cfg.point_features))
    out = model.encode(b)
    return [out.per_input_voxel(layer) for layer in range(len(out.activations))]


def cka_alpha(pretrained: Path, finetuned: list[Path], store: Path, frames: int = 2) -> list[float]:
    """Per-layer alpha from one pre-trained and one or more fine-tuned students."""
    src = VoxelStore.open(store)
    ref = layer_activations(load_student(pretrained, src.attrs), src, frames)
    per_model = []
    for path in finetuned:
        acts = layer_activations(load_student(path, src.attrs), src, frames)
        if len(acts) != len(ref):
            raise ValueError(f"{path}: {len(acts)} layers, the pre-trained student has {len(ref)}")
        per_model.append(torch.stack([linear_cka(a, b) for a, b in zip(ref, acts, strict=True)]))
    return [round(float(v), 6) for v in torch.stack(per_model).mean(0)]
