"""The pre-training study's results: every fine-tuning run's metric as a table and a figure.

Runs are read from the metrics the pipeline wrote: ``metrics/<dataset>/<task>.json`` (the
main fine-tune: the GPICTURE student on all labels) and
``metrics/study/<task>/<init>-<fraction>.json`` (the ``study_*`` stages).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from gpicture.atomic import write_file_atomic
from gpicture.viz.study import plot_study

INIT_ORDER = ("gpicture", "scratch", "noteacher")
INIT_LABELS = {"gpicture": "GPICTURE", "scratch": "scratch", "noteacher": "GPICTURE w/o teacher targets"}
_RUN = re.compile(r"^(?P<init>[a-z]+)-(?P<fraction>[0-9.]+)\.json$")


def _value(path: Path, key: str) -> float | None:
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a metrics JSON file ({exc})") from None
    if key not in metrics:
        raise ValueError(f"{path}: no metric {key!r} (has {', '.join(sorted(metrics))})")
    v = metrics[key]
    return None if v is None else float(v)


def collect_rows(metrics_dir: Path, dataset: str, task_metrics: dict[str, str]) -> list[dict]:
    """One row per run: {task, metric, init, label_fraction, value}."""
    metrics_dir = Path(metrics_dir)
    rows = []
    for task, key in task_metrics.items():
        main = metrics_dir / dataset / f"{task}.json"
        if main.is_file():
            rows.append({"task": task, "metric": key, "init": "gpicture", "label_fraction": 1.0,
                         "value": _value(main, key)})
        for f in sorted((metrics_dir / "study" / task).glob("*.json")):
            m = _RUN.match(f.name)
            if m is None:
                continue
            rows.append({"task": task, "metric": key, "init": m["init"], "label_fraction": float(m["fraction"]),
                         "value": _value(f, key)})
    if not rows:
        raise ValueError(f"{metrics_dir}: no study metrics found (run the study_* stages first)")
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Tasks x initialisations, one column per label fraction."""
    fractions = sorted({r["label_fraction"] for r in rows})
    head = "| task (metric) | initialisation | " + " | ".join(f"{f:.0%} labels" for f in fractions) + " |"
    lines = [head, "|---|---|" + "---:|" * len(fractions)]
    for task in dict.fromkeys(r["task"] for r in rows):
        for init in INIT_ORDER:
            cells = {r["label_fraction"]: r["value"] for r in rows if r["task"] == task and r["init"] == init}
            if not cells:
                continue
            metric = next(r["metric"] for r in rows if r["task"] == task)
            vals = [("—" if f not in cells else "n/a" if cells[f] is None else f"{100 * cells[f]:.1f}") for f in fractions]
            lines.append(f"| {task} ({metric}, %) | {INIT_LABELS.get(init, init)} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def write_report(metrics_dir: Path, out_dir: Path, dataset: str, task_metrics: dict[str, str]) -> list[dict]:
    """Write ``out_dir/study.md`` and ``out_dir/study.png``; returns the rows."""

    rows = collect_rows(metrics_dir, dataset, task_metrics)
    out_dir = Path(out_dir)
    write_file_atomic(out_dir / "study.md", f"Fine-tuning on {dataset} (synthetic default), val split.\n\n"
                      + markdown_table(rows))
    plot_study([{**r, "init": INIT_LABELS.get(r["init"], r["init"])} for r in rows if r["value"] is not None],
               out_dir / "study.png")
    return rows
