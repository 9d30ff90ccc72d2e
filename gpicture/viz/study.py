"""The figure of the label-efficiency study: fine-tuning metric vs fraction of labels, per init.

The paper's claims (pre-training beats scratch; 50 % of the labels with pre-training come close
to 100 % from scratch) are read off this figure: one panel per task, the label fraction on the
x axis, one line per initialisation (``gpicture``, ``scratch``, ``no-teacher``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpicture.atomic import write_file_atomic
from gpicture.viz.canvas import DPI, FONT, TITLE_FONT, Picture, add_axes_px, new_figure

PANEL_W, PANEL_H = 420, 320
INIT_STYLE = {"gpicture": ("#d55e00", "o", "-"), "scratch": ("#0072b2", "s", "--"),
              "no-teacher": ("#009e73", "^", "-.")}
OTHER_COLORS = ("#cc79a7", "#e69f00", "#56b4e9", "#000000")
REQUIRED = ("task", "metric", "init", "label_fraction", "value")


def _check_rows(rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        raise ValueError("plot_study: no rows")
    for k, r in enumerate(rows):
        missing = [f for f in REQUIRED if f not in r]
        if missing:
            raise ValueError(f"plot_study: row {k} lacks {missing} (each row needs {', '.join(REQUIRED)})")
        if not 0.0 < float(r["label_fraction"]) <= 1.0:
            raise ValueError(f"plot_study: row {k}: label_fraction {r['label_fraction']} outside (0, 1]")


def study_figure(rows: Sequence[dict[str, Any]], title: str = "Fine-tuning with a fraction of the labels") -> Picture:
    """The study figure (module docstring) of ``rows``: dicts with ``task``, ``metric``, ``init``,
    ``label_fraction`` (0, 1] and ``value``; several rows for the same point (seeds) are averaged
    and their min-max drawn as an error bar. Panels in order of first appearance."""
    _check_rows(rows)
    panels = list(dict.fromkeys((str(r["task"]), str(r["metric"])) for r in rows))
    inits = list(dict.fromkeys(str(r["init"]) for r in rows))
    left, top, gap, bottom = 72, 48, 70, 60
    width = left + len(panels) * PANEL_W + (len(panels) - 1) * gap + 150
    fig = new_figure(width, top + PANEL_H + bottom)
    fig.text(left / width, 1 - 8 / fig.bbox.height, title, ha="left", va="top", fontsize=TITLE_FONT, weight="bold")
    others = iter(OTHER_COLORS * 4)
    style = {i: INIT_STYLE.get(i) or (next(others), "D", ":") for i in inits}
    handles = {}
    for k, (task, metric) in enumerate(panels):
        ax = add_axes_px(fig, left + k * (PANEL_W + gap), top, PANEL_W, PANEL_H)
        for init in inits:
            sel = [r for r in rows if (str(r["task"]), str(r["metric"]), str(r["init"])) == (task, metric, init)]
            if not sel:
                continue
            f = np.array([float(r["label_fraction"]) for r in sel])
            v = np.array([float(r["value"]) for r in sel])
            xs = np.unique(f)
            mean = np.array([v[f == x].mean() for x in xs])
            lo = mean - np.array([v[f == x].min() for x in xs])
            hi = np.array([v[f == x].max() for x in xs]) - mean
            color, marker, ls = style[init]
            h = ax.errorbar(100 * xs, mean, yerr=np.vstack([lo, hi]) if (lo + hi).any() else None, color=color,
                            marker=marker, linestyle=ls, linewidth=1.8, markersize=6, capsize=3, label=init)
            handles[init] = h
        ax.set_title(task, fontsize=FONT)
        ax.set_xlabel("labelled frames (%)", fontsize=FONT)
        ax.set_ylabel(metric, fontsize=FONT)
        ax.set_xlim(0, 105)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=FONT - 2)
    fig.legend([handles[i] for i in inits if i in handles], [i for i in inits if i in handles], loc="upper right",
               bbox_to_anchor=(1 - 8 / width, 1 - top / fig.bbox.height), frameon=False, fontsize=FONT - 1,
               title="initialisation", title_fontsize=FONT - 1)
    return Picture(fig)


def plot_study(rows: Sequence[dict[str, Any]], out: Path, title: str | None = None) -> Path:
    """Write :func:`study_figure` of ``rows`` to ``out`` (PNG, or PDF/SVG by suffix), atomically."""
    pic = study_figure(rows, title) if title else study_figure(rows)
    return save_any(pic, Path(out))


def save_any(pic: Picture, out: Path) -> Path:
    """Save a picture as PNG (or PDF / SVG for papers, by the suffix of ``out``), atomically."""
    import io

    fmt = out.suffix.lower().lstrip(".") or "png"
    if fmt not in ("png", "pdf", "svg"):
        raise ValueError(f"{out}: write .png, .pdf or .svg")
    buf = io.BytesIO()
    pic.figure.savefig(buf, format=fmt, dpi=DPI)
    write_file_atomic(out, buf.getvalue())
    return out
