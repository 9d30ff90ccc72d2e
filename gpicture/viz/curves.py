"""Training and evaluation curves from a dvclive folder (``<dir>/plots/metrics/**/*.tsv``).

dvclive writes one TSV per logged metric (``step``, the value, sometimes ``timestamp``), nested
by the metric's path (``train/loss`` -> ``plots/metrics/train/loss.tsv``). Metrics with the same
last name under different prefixes (``train/loss``, ``eval/loss``) share a panel, one line each.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from gpicture.viz.canvas import FONT, TITLE_FONT, Picture, add_axes_px, new_figure
from gpicture.viz.study import save_any

PANEL_W, PANEL_H, COLS = 360, 240, 3


def read_metrics(dvclive_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metric path (``train/loss``) -> (steps (n,), values (n,)) of every TSV under
    ``dvclive_dir/plots/metrics``; ValueError naming the folder or a malformed file."""
    root = Path(dvclive_dir) / "plots" / "metrics"
    files = sorted(root.rglob("*.tsv")) if root.is_dir() else []
    if not files:
        raise ValueError(f"{dvclive_dir}: no dvclive metrics (expected {root}/*.tsv)")
    out = {}
    for f in files:
        name = f.relative_to(root).with_suffix("").as_posix()
        with f.open(newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        key = f.stem
        try:
            steps = np.array([float(r["step"]) for r in rows])
            col = key if rows and key in rows[0] else next(c for c in (rows[0] if rows else {}) if c not in
                                                           ("step", "timestamp"))
            values = np.array([float(r[col]) for r in rows])
        except (KeyError, ValueError, StopIteration) as exc:
            raise ValueError(f"{f}: not a dvclive metric file ({exc!r})") from None
        out[name] = (steps, values)
    return out


def curves_figure(dvclive_dir: Path, title: str | None = None) -> Picture:
    """One panel per metric name (module docstring), value vs step."""
    metrics = read_metrics(dvclive_dir)
    groups: dict[str, list[str]] = {}
    for name in metrics:
        groups.setdefault(name.rsplit("/", 1)[-1], []).append(name)
    n = len(groups)
    cols = min(COLS, n)
    nrows = -(-n // cols)
    left, top, gx, gy, bottom = 70, 50, 80, 70, 50
    width = left + cols * PANEL_W + (cols - 1) * gx + 30
    fig = new_figure(width, top + nrows * PANEL_H + (nrows - 1) * gy + bottom)
    fig.text(left / width, 1 - 8 / fig.bbox.height, title or f"training curves · {dvclive_dir}", ha="left",
             va="top", fontsize=TITLE_FONT, weight="bold")
    for k, (short, names) in enumerate(groups.items()):
        r, c = divmod(k, cols)
        ax = add_axes_px(fig, left + c * (PANEL_W + gx), top + r * (PANEL_H + gy), PANEL_W, PANEL_H)
        for name in names:
            steps, values = metrics[name]
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, linewidth=1.6,
                    label=name if len(names) > 1 else None)
        ax.set_title(short, fontsize=FONT)
        ax.set_xlabel("step", fontsize=FONT - 1)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=FONT - 2)
        if len(names) > 1:
            ax.legend(fontsize=FONT - 3, frameon=False)
    return Picture(fig)


def plot_curves(dvclive_dir: Path, out: Path, title: str | None = None) -> Path:
    """Write :func:`curves_figure` of a dvclive folder to ``out`` (.png, .pdf or .svg), atomically."""
    return save_any(curves_figure(Path(dvclive_dir), title), Path(out))
