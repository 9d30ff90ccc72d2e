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
