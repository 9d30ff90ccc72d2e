"""Naming what is broken in a nuScenes table folder.

The devkit's ``NuScenes(...)`` reports a broken folder as a bare ``JSONDecodeError`` (which
file?), an ``AssertionError`` (label files and records differ in number) or a ``KeyError``
holding a token (a record refers to a record that no table holds). :func:`load_error` turns
such an exception into one message naming the JSON file, the record and the problem. It runs
only after the devkit failed, so a good dataset pays nothing for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The order in which the devkit loads the tables (the first broken one is the one it hit).
LOAD_ORDER = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
              "scene", "sample", "sample_data", "sample_annotation", "map", "lidarseg", "panoptic",
              "image_annotations")
LABEL_TASKS = ("lidarseg", "panoptic")


def _load(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _tables(table_root: Path) -> dict[str, list[dict]]:
    """The tables present, parsed (ValueError naming the first file that is not valid JSON)."""
    out = {}
    for name in LOAD_ORDER:
        path = table_root / f"{name}.json"
        if not path.is_file():
            continue
        try:
            out[name] = _load(path)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{path}: not a valid JSON table ({exc}); truncated or corrupt?") from None
        if not isinstance(out[name], list):
            raise ValueError(f"{path}: not a nuScenes table (a JSON list of records)")
    return out


def _label_files(root: Path, version: str, table_root: Path, tables: dict[str, list[dict]]) -> Exception | None:
    """A missing (or unlisted) lidarseg / panoptic label file, named; None if the files match."""
    for task in LABEL_TASKS:
        if task not in tables:
            continue
        table = table_root / f"{task}.json"
        for rec in tables[task]:
            path = root / rec.get("filename", "")
            if not path.is_file():
                return FileNotFoundError(f"{path}: missing {task} label file (listed in {table}, "
                                         f"sample_data {rec.get('sample_data_token', '?')})")
        folder = root / task / version
        listed = {Path(rec["filename"]).name for rec in tables[task]}
        extra = sorted(p.name for p in folder.iterdir()
                       if p.suffix in (".bin", ".npz") and p.name not in listed) if folder.is_dir() else []
        if extra:
            return ValueError(f"{folder / extra[0]}: a {task} label file that {table} does not list "
                              f"({len(extra)} such files); the devkit refuses the folder")
    return None


def _dangling(table_root: Path, token: str, tables: dict[str, list[dict]]) -> Exception:
    """The record that refers to ``token``, which no table holds."""
    for name, records in tables.items():
        for rec in records:
            for key, value in rec.items():
                if key != "token" and (value == token or (isinstance(value, list) and token in value)):
                    target = key.removesuffix("_token")
                    where = f"{table_root / f'{target}.json'}" if key.endswith("_token") else "any table"
                    return ValueError(f"{table_root / f'{name}.json'}: record {rec.get('token', '?')}: "
                                      f"{key} {token!r} is not in {where} (a dangling token)")
    if any(rec.get("token") == token for rec in tables.get("log", [])):
        return ValueError(f"{table_root / 'log.json'}: record {token}: no record of {table_root / 'map.json'} "
                          "lists it in its log_tokens")
    return ValueError(f"{table_root}: the devkit looked up {token!r}, which no table holds "
                      "(a dangling token or a record without that field)")


def load_error(root: Path, version: str, exc: BaseException) -> Exception:
    """One clear exception for ``exc``, raised by ``NuScenes(version, root)``: the broken JSON
    file, the missing label file, or the record with a dangling token."""
    table_root = root / version
    try:
        tables = _tables(table_root)
    except ValueError as named:
        return named
    if isinstance(exc, AssertionError):
        found = _label_files(root, version, table_root, tables)
        if found is not None:
            return found
        if any("index" not in c for c in tables.get("category", [])):
            return ValueError(f"{table_root / 'category.json'}: records without `index`: use the category.json "
                              "that comes with nuScenes-lidarseg")
    if isinstance(exc, KeyError) and exc.args:
        return _dangling(table_root, str(exc.args[0]), tables)
    return ValueError(f"{table_root}: the nuScenes devkit cannot load the tables ({type(exc).__name__}: {exc})")
