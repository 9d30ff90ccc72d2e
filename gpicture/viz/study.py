"""The figures of the label-efficiency study: metric vs fraction of labels per initialisation
(with the seeds' spread as error bars), and every run's learning curve.

The paper's claims (pre-training beats scratch; 50 % of the labels with pre-training come close
to 100 % from scratch) are read off :func:`study_figure`: one panel per task, the label fraction
on the x axis, one line per initialisation (GPICTURE, no teacher targets, scratch), each point the
mean over the fine-tuning seeds with an error bar of ± the spread. A point without any run is
not drawn and is named in the panel ("missing: ..."), one with fewer seeds than planned is
named too ("partial: ..."). :func:`study_curves_figure` draws the training loss of every run, one
panel per (task, fraction), a colour per initialisation and a line style per seed.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpicture.atomic import write_file_atomic
from gpicture.viz.canvas import DPI, FONT, TITLE_FONT, Picture, add_axes_px, new_figure

PANEL_W, PANEL_H = 420, 320
CURVE_W, CURVE_H = 300, 200
LEGEND_W = 300  # the legend strip on the right
INIT_STYLE = {"GPICTURE": ("#d55e00", "o", "-"), "scratch": ("#0072b2", "s", "--"),
              "GPICTURE w/o teacher targets": ("#009e73", "^", "-.")}
OTHER_COLORS = ("#cc79a7", "#e69f00", "#56b4e9", "#000000")
SEED_STYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class StudyPoint:
    """One (task, init, fraction) cell of the study as the figure draws it: the mean over the
    seeds' values and the spread (the error bar's half height), in the metric's own units.
    ``mean`` None: no run gave a value (drawn as missing); ``seeds`` < ``planned``: partial."""

    task: str
    metric: str
    init: str  # the legend's label
    fraction: float  # (0, 1]
    mean: float | None
    spread: float | None
    seeds: int  # runs with a value
    planned: int  # runs the study planned


@dataclass(frozen=True)
class CurveRun:
    """One run's learning curve (``steps`` and ``values`` of the same length), or a run without
    one (``steps`` empty: named in its panel as missing)."""

    task: str
    init: str  # the legend's label
    fraction: float
    seed: int
    steps: tuple[float, ...]
    values: tuple[float, ...]


def _styles(inits: Sequence[str]) -> dict[str, tuple[str, str, str]]:
    others = iter(OTHER_COLORS * 4)
    return {i: INIT_STYLE.get(i) or (next(others), "D", ":") for i in inits}


def _check_points(points: Sequence[StudyPoint]) -> None:
    if not points:
        raise ValueError("study_figure: no points")
    for k, p in enumerate(points):
        if not 0.0 < float(p.fraction) <= 1.0:
            raise ValueError(f"study_figure: point {k}: label_fraction {p.fraction} outside (0, 1]")
        if (p.mean is None) != (p.spread is None):
            raise ValueError(f"study_figure: point {k}: a mean needs a spread and the other way round")


def _note(ax, lines: list[str], right: bool = False) -> None:
    """Name what a panel does not draw, in its upper left (``right``: upper right) corner."""
    if lines:
        ax.text(0.98 if right else 0.02, 0.98, "\n".join(lines), transform=ax.transAxes,
                ha="right" if right else "left", va="top", fontsize=FONT - 3, color="#444444")


def study_figure(points: Sequence[StudyPoint], title: str = "Fine-tuning with a fraction of the labels") -> Picture:
    """The study figure (module docstring) of ``points``; panels and lines in order of first
    appearance, values drawn as given (the caller picks the units, the y label says them)."""
    _check_points(points)
    panels = list(dict.fromkeys((p.task, p.metric) for p in points))
    inits = list(dict.fromkeys(p.init for p in points))
    left, top, gap, bottom = 72, 60, 70, 60
    strip = left + len(panels) * PANEL_W + (len(panels) - 1) * gap + 24  # the legend's left edge
    width = strip + LEGEND_W
    fig = new_figure(width, top + PANEL_H + bottom)
    fig.text(left / width, 1 - 8 / fig.bbox.height, title, ha="left", va="top", fontsize=TITLE_FONT, weight="bold")
    style = _styles(inits)
    handles = {}
    for k, (task, metric) in enumerate(panels):
        ax = add_axes_px(fig, left + k * (PANEL_W + gap), top, PANEL_W, PANEL_H)
        notes = []
        for init in inits:
            sel = sorted((p for p in points if (p.task, p.metric, p.init) == (task, metric, init)),
                         key=lambda p: p.fraction)
            drawn = [p for p in sel if p.mean is not None]
            notes += [f"missing: {init} {p.fraction:.0%}" for p in sel if p.mean is None]
            notes += [f"partial: {init} {p.fraction:.0%} ({p.seeds}/{p.planned} seeds)" for p in drawn
                      if p.seeds < p.planned]
            if not drawn:
                continue
            xs = np.array([100 * float(p.fraction) for p in drawn])
            mean = np.array([float(p.mean) for p in drawn])
            err = np.array([float(p.spread) for p in drawn])
            color, marker, ls = style[init]
            handles[init] = ax.errorbar(xs, mean, yerr=err if err.any() else None, color=color, marker=marker,
                                        linestyle=ls, linewidth=1.8, markersize=6, capsize=3, label=init)
        _note(ax, notes)
        ax.set_title(task, fontsize=FONT)
        ax.set_xlabel("labelled frames (%)", fontsize=FONT)
        ax.set_ylabel(metric, fontsize=FONT)
        ax.set_xlim(0, 105)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=FONT - 2)
    fig.legend([handles[i] for i in inits if i in handles], [i for i in inits if i in handles], loc="upper left",
               bbox_to_anchor=(strip / width, 1 - top / fig.bbox.height), frameon=False, fontsize=FONT - 1,
               title="initialisation (mean ± spread)", title_fontsize=FONT - 1)
    return Picture(fig)


def study_curves_figure(runs: Sequence[CurveRun], metric: str = "loss",
                        title: str = "Fine-tuning curves of every study run") -> Picture:
    """One panel per (task, fraction): the training ``metric`` of each run against its step, a
    colour per initialisation, a line style per seed; runs without a curve named in the panel."""
    if not runs:
        raise ValueError("study_curves_figure: no runs")
    tasks = list(dict.fromkeys(r.task for r in runs))
    fractions = sorted({float(r.fraction) for r in runs})
    inits = list(dict.fromkeys(r.init for r in runs))
    seeds = sorted({r.seed for r in runs})
    left, top, gx, gy, bottom = 70, 60, 60, 70, 50
    strip = left + len(fractions) * CURVE_W + (len(fractions) - 1) * gx + 24
    width = strip + LEGEND_W
    fig = new_figure(width, top + len(tasks) * CURVE_H + (len(tasks) - 1) * gy + bottom)
    fig.text(left / width, 1 - 8 / fig.bbox.height, title, ha="left", va="top", fontsize=TITLE_FONT, weight="bold")
    style = _styles(inits)
    handles = {}
    for r_i, task in enumerate(tasks):
        for c_i, fraction in enumerate(fractions):
            ax = add_axes_px(fig, left + c_i * (CURVE_W + gx), top + r_i * (CURVE_H + gy), CURVE_W, CURVE_H)
            missing: dict[str, list[str]] = {}
            for run in (r for r in runs if r.task == task and float(r.fraction) == fraction):
                if not run.steps:
                    missing.setdefault(run.init, []).append(f"s{run.seed}")
                    continue
                color = style[run.init][0]
                ls = SEED_STYLES[seeds.index(run.seed) % len(SEED_STYLES)]
                (line,) = ax.plot(run.steps, run.values, color=color, linestyle=ls, linewidth=1.4,
                                  marker="o" if len(run.steps) < 30 else None, markersize=3)
                handles.setdefault(run.init, line)
            _note(ax, [f"missing: {init} {' '.join(s)}" for init, s in missing.items()], right=True)
            ax.set_title(f"{task} · {fraction:.0%} labels", fontsize=FONT - 1)
            ax.set_xlabel("epoch (dvclive step)", fontsize=FONT - 2)
            ax.set_ylabel(metric, fontsize=FONT - 2)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=FONT - 3)
    names = [i for i in inits if i in handles]
    fig.legend([handles[i] for i in names], names, loc="upper left", frameon=False, fontsize=FONT - 1,
               bbox_to_anchor=(strip / width, 1 - top / fig.bbox.height),
               title="initialisation (" + ", ".join(f"s{s} {SEED_STYLES[k % len(SEED_STYLES)]}"
                                                    for k, s in enumerate(seeds)) + ")",
               title_fontsize=FONT - 2)
    return Picture(fig)


def plot_study(points: Sequence[StudyPoint], out: Path, title: str | None = None) -> Path:
    """Write :func:`study_figure` of ``points`` to ``out`` (PNG, or PDF/SVG by suffix), atomically."""
    pic = study_figure(points, title) if title else study_figure(points)
    return save_any(pic, Path(out))


def plot_study_curves(runs: Sequence[CurveRun], out: Path) -> Path:
    """Write :func:`study_curves_figure` of ``runs`` to ``out`` (.png, .pdf or .svg), atomically."""
    return save_any(study_curves_figure(runs), Path(out))


def save_any(pic: Picture, out: Path) -> Path:
    """Save a picture as PNG (or PDF / SVG for papers, by the suffix of ``out``), atomically."""
    fmt = out.suffix.lower().lstrip(".") or "png"
    if fmt not in ("png", "pdf", "svg"):
        raise ValueError(f"{out}: write .png, .pdf or .svg")
    buf = io.BytesIO()
    pic.figure.savefig(buf, format=fmt, dpi=DPI)
    write_file_atomic(out, buf.getvalue())
    return out
