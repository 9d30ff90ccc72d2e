"""Reading ``params.yaml``, the single source of truth for every stage's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ParamsError(ValueError):
    """params.yaml is missing, malformed, or lacks a section a stage needs."""


def load_section(path: Path, *keys: str) -> dict[str, Any]:
    """The nested section ``keys`` of the YAML file at ``path`` (e.g. "synth", "nuscenes")."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ParamsError(f"{path}: no such params file") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from exc
    node: Any = data
    for i, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            raise ParamsError(f"{path}: missing section '{'.'.join(keys[: i + 1])}'")
        node = node[key]
    if not isinstance(node, dict):
        raise ParamsError(f"{path}: section '{'.'.join(keys)}' is not a mapping")
    return node


def with_profile(section: dict[str, Any], profile: str, dataset: str) -> dict[str, Any]:
    """``section`` with the overrides of ``section.profiles.<profile>.<dataset>`` applied
    (``model.profile: full`` switches every stage to the paper's settings in one step)."""
    merged = {k: v for k, v in section.items() if k != "profiles"}
    merged.update((section.get("profiles") or {}).get(profile, {}).get(dataset, {}) or {})
    return merged


def model_profile(params: Path, dataset: str) -> tuple[str, dict[str, Any]]:
    """(name, settings) of the model profile ``model.profile`` selects for ``dataset``."""
    sec = load_section(params, "model")
    name = str(sec.get("profile", "small"))
    try:
        return name, dict(sec["profiles"][name][dataset])
    except (KeyError, TypeError):
        raise ParamsError(f"{params}: no model profile '{name}' for {dataset}") from None
