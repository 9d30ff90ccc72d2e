"""The label-efficiency study's results: per task, initialisation and label fraction the mean
± spread over the fine-tuning seeds, the gains of GPICTURE over scratch and over the ablation
without teacher targets, the tables (``study.md``) and the figures (``study.png``,
``study-curves.png``).

The planned runs are params ``study`` (:class:`StudySpec`): tasks x inits x fractions x seeds,
the fractions x seeds of one (task, init) run by the stage ``study_<init>@<task>``
(``gpicture study-run``), each written as ``<metrics>/<task>/<init>/<fraction>-s<seed>.json``
(and its dvclive curves under ``<runs>/<task>/<init>/<fraction>-s<seed>/dvclive``). A planned run without a file is reported
as missing, never dropped.

Spread: half the range of the seeds' values, (max - min) / 2, so mean ± spread covers every
seed's value (with two seeds: exactly both). A gain (difference of two cells' means) *exceeds
the spread* when it is positive and larger than the spread of either cell; the verdict needs
every planned seed of both cells, and at least two.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gpicture.atomic import write_file_atomic
from gpicture.viz.curves import read_metrics
from gpicture.viz.study import CurveRun, StudyPoint, plot_study, plot_study_curves

GPICTURE, SCRATCH, NOTEACHER = "gpicture", "scratch", "noteacher"
INIT_LABELS = {GPICTURE: "GPICTURE", NOTEACHER: "GPICTURE w/o teacher targets", SCRATCH: "scratch"}
SHORT_LABELS = {GPICTURE: "GPICTURE", NOTEACHER: "no-teacher", SCRATCH: "scratch"}
COMPARISONS = ((GPICTURE, SCRATCH), (GPICTURE, NOTEACHER))  # (init, baseline): the gain rows
RunStatus = Literal["ok", "missing", "undefined"]


@dataclass(frozen=True)
class StudySpec:
    """The planned runs (params ``study``). ``fractions`` keep the values params give, whose
    ``str`` is how DVC writes them into the run names (``0.1``, ``1.0``)."""

    dataset: str
    tasks: tuple[str, ...]
    metrics: dict[str, str]  # task -> the key of its metrics JSON the study reports
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    inits: tuple[str, ...]
    claim_fraction: float

    @classmethod
    def from_params(cls, sec: dict[str, Any]) -> StudySpec:
        """From params ``study``; ValueError for a task without a metric, a fraction outside
        (0, 1], repeated seeds or a claim fraction that is not planned."""
        tasks = tuple(str(t) for t in sec["tasks"])
        metrics = {str(k): str(v) for k, v in dict(sec["metrics"]).items()}
        if missing := [t for t in tasks if t not in metrics]:
            raise ValueError(f"study.metrics names no metric for {', '.join(missing)}")
        fractions = tuple(sec["fractions"])
        if bad := [f for f in fractions if not 0 < float(f) <= 1]:
            raise ValueError(f"study.fractions: {bad} outside (0, 1]")
        seeds = tuple(int(s) for s in sec["seeds"])
        if len(set(seeds)) != len(seeds) or not seeds:
            raise ValueError(f"study.seeds: {list(seeds)} (give distinct seeds, at least two for a spread)")
        claim = float(sec.get("claim_fraction", 0.25))
        if claim not in [float(f) for f in fractions]:
            raise ValueError(f"study.claim_fraction {claim} is not one of study.fractions {list(fractions)}")
        return cls(str(sec["dataset"]), tasks, metrics, fractions, seeds, tuple(str(i) for i in sec["inits"]), claim)


def run_dir_name(fraction: float, seed: int) -> str:
    """A run's folder / metrics file name inside its ``<task>/<init>`` folder: ``<fraction>-s<seed>``
    (the fraction as params give it: ``0.1``, ``1.0``)."""
    return f"{fraction}-s{seed}"


def run_path(root: Path, task: str, init: str, fraction: float, seed: int) -> Path:
    """``root/<task>/<init>/<fraction>-s<seed>``: a run's folder (models) or, with ``.json``, its metrics."""
    return Path(root) / task / init / run_dir_name(fraction, seed)


def run_metrics_path(root: Path, task: str, init: str, fraction: float, seed: int) -> Path:
    """``root/<task>/<init>/<fraction>-s<seed>.json`` (not ``with_suffix``: the fraction has a dot)."""
    return Path(root) / task / init / f"{run_dir_name(fraction, seed)}.json"


@dataclass(frozen=True)
class StudyRun:
    """One planned fine-tuning run and its metric (``value`` None unless ``status`` is ok;
    ``undefined``: the file is there, its metric is null)."""

    task: str
    init: str
    fraction: float
    seed: int
    status: RunStatus
    value: float | None = None


@dataclass(frozen=True)
class StudyCell:
    """The runs of one (task, init, fraction) over the planned seeds."""

    task: str
    metric: str
    init: str
    fraction: float
    runs: tuple[StudyRun, ...]

    @property
    def values(self) -> list[float]:
        return [r.value for r in self.runs if r.value is not None]

    @property
    def mean(self) -> float | None:
        v = self.values
        return sum(v) / len(v) if v else None

    @property
    def spread(self) -> float | None:
        """Half the range of the seeds' values (0 for one value, None for none)."""
        v = self.values
        return (max(v) - min(v)) / 2 if v else None

    @property
    def complete(self) -> bool:
        """Every planned seed gave a value."""
        return all(r.status == "ok" for r in self.runs)


@dataclass(frozen=True)
class StudyGain:
    """``init``'s mean minus ``baseline``'s at one (task, fraction). ``exceeds`` None: no
    verdict (a cell incomplete, or fewer than two seeds)."""

    task: str
    fraction: float
    init: str
    baseline: str
    gain: float | None
    exceeds: bool | None


def collect_runs(metrics_dir: Path, spec: StudySpec) -> list[StudyRun]:
    """Every planned run of ``spec`` with its metric from ``metrics_dir/<task>/<init>/<run>.json``."""
    runs = []
    for task in spec.tasks:
        for init in spec.inits:
            for fraction in spec.fractions:
                for seed in spec.seeds:
                    runs.append(_read_run(run_metrics_path(metrics_dir, task, init, fraction, seed), task,
                                          spec.metrics[task], init, fraction, seed))
    return runs


def _read_run(path: Path, task: str, key: str, init: str, fraction: float, seed: int) -> StudyRun:
    if not path.is_file():
        return StudyRun(task, init, fraction, seed, "missing")
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a metrics JSON file ({exc})") from None
    if key not in metrics:
        raise ValueError(f"{path}: no metric {key!r} (has {', '.join(sorted(metrics))})")
    if metrics[key] is None:
        return StudyRun(task, init, fraction, seed, "undefined")
    return StudyRun(task, init, fraction, seed, "ok", float(metrics[key]))


def study_cells(runs: Sequence[StudyRun], spec: StudySpec) -> list[StudyCell]:
    """The runs grouped by (task, init, fraction), in the spec's order."""
    return [StudyCell(task, spec.metrics[task], init, fraction,
                      tuple(r for r in runs if (r.task, r.init, r.fraction) == (task, init, fraction)))
            for task in spec.tasks for init in spec.inits for fraction in spec.fractions]


def gain(a: StudyCell, b: StudyCell) -> StudyGain:
    """``a``'s mean minus ``b``'s, and whether it exceeds the spread of either (module docstring)."""
    if a.mean is None or b.mean is None:
        return StudyGain(a.task, a.fraction, a.init, b.init, None, None)
    g = a.mean - b.mean
    verdict = a.complete and b.complete and min(len(a.values), len(b.values)) >= 2
    return StudyGain(a.task, a.fraction, a.init, b.init, g, (g > max(a.spread, b.spread)) if verdict else None)


def study_gains(cells: Sequence[StudyCell]) -> list[StudyGain]:
    """The gains of :data:`COMPARISONS` (where both inits are planned) per task and fraction."""
    index = {(c.task, c.init, c.fraction): c for c in cells}
    out = []
    for task, fraction in dict.fromkeys((c.task, c.fraction) for c in cells):
        for init, base in COMPARISONS:
            if (task, init, fraction) in index and (task, base, fraction) in index:
                out.append(gain(index[task, init, fraction], index[task, base, fraction]))
    return out


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def format_cell(cell: StudyCell) -> str:
    """``mean ± spread`` in % (points), with the seeds that gave no value named."""
    absent = [f"s{r.seed} {'missing' if r.status == 'missing' else 'n/a'}" for r in cell.runs if r.status != "ok"]
    if cell.mean is None:
        return "missing" if all(r.status == "missing" for r in cell.runs) else "n/a (" + ", ".join(absent) + ")"
    text = f"{_pct(cell.mean)} ± {_pct(cell.spread)}" if len(cell.values) > 1 else f"{_pct(cell.mean)} (1 seed)"
    return text + (f" ({', '.join(absent)})" if absent else "")


def format_gain(g: StudyGain) -> str:
    """``+3.1 ✓`` (exceeds both spreads), ``+0.4`` (within them), ``+0.4 ?`` (no verdict), ``missing``."""
    if g.gain is None:
        return "missing"
    return f"{100 * g.gain:+.1f}" + {True: " ✓", False: "", None: " ?"}[g.exceeds]


def _seed_values(cell: StudyCell) -> str:
    return " / ".join(_pct(r.value) if r.value is not None else ("—" if r.status == "missing" else "n/a")
                      for r in cell.runs)


def _verdict(sel: Sequence[StudyGain], need_all: bool) -> str:
    """met / not met / undecided of "beats it beyond the spreads on every (any) task of ``sel``"."""
    verdicts = [g.exceeds for g in sel]
    if need_all:
        return "met" if all(verdicts) else "not met" if False in verdicts else "undecided"
    return "met" if True in verdicts else "not met" if all(v is False for v in verdicts) else "undecided"


def _verdicts(spec: StudySpec, gains: Sequence[StudyGain]) -> list[str]:
    lines = [f"### Verdict at {spec.claim_fraction:.0%} of the labels", ""]
    for (init, base), need_all in zip(COMPARISONS, (True, False), strict=True):
        sel = [g for g in gains if (g.init, g.baseline) == (init, base) and float(g.fraction) == spec.claim_fraction]
        if not sel:
            continue
        claim = "on every task" if need_all else "on at least one task"
        per_task = ", ".join(f"{g.task} {format_gain(g)}" for g in sel)
        lines.append(f"- {SHORT_LABELS[init]} beats {SHORT_LABELS[base]} by more than the spread of either "
                     f"{claim}: **{_verdict(sel, need_all)}** ({per_task})")
    beyond = {}
    for g in gains:
        if g.exceeds:
            beyond.setdefault(f"{SHORT_LABELS[g.init]} − {SHORT_LABELS[g.baseline]}", []).append(
                f"{g.task} {float(g.fraction):.0%}")
    lines.append("- gains beyond the spreads at any fraction: "
                 + ("; ".join(f"{k}: {', '.join(v)}" for k, v in beyond.items()) if beyond else "none"))
    return [*lines, ""]


def markdown_report(spec: StudySpec, cells: Sequence[StudyCell], gains: Sequence[StudyGain]) -> str:
    """The report: its protocol, per task a table (inits x fractions, then the gain rows), the
    verdict at ``spec.claim_fraction`` and every run's value per seed."""
    heads = " | ".join(f"{float(f):.0%} labels" for f in spec.fractions)
    rule = "|---|" + "---:|" * len(spec.fractions)
    n_missing = sum(r.status == "missing" for c in cells for r in c.runs)
    protocol = (f"Fine-tuning on {spec.dataset} (val split) from each initialisation, on "
                f"{', '.join(f'{float(f):.0%}' for f in spec.fractions)} of the labelled training frames, "
                f"over the fine-tuning seeds {', '.join(map(str, spec.seeds))} (each seed draws its own labelled "
                "subset and its own training).")
    legend = ("Cells: mean ± spread over the seeds, in % (points); spread = half the range of the seeds' values, "
              "(max − min) / 2. Gains: difference of the means; ✓ the gain exceeds the spread of both cells, "
              "? no verdict (a run missing or fewer than 2 seeds).")
    lines = [protocol, "", legend, ""]
    if n_missing:
        lines += [f"**{n_missing} of {sum(len(c.runs) for c in cells)} planned runs are missing** (shown as such).", ""]
    index = {(c.task, c.init, c.fraction): c for c in cells}
    for task in spec.tasks:
        lines += [f"### {task} ({spec.metrics[task]}, %)", "", f"| initialisation | {heads} |", rule]
        for init in spec.inits:
            lines.append(f"| {INIT_LABELS.get(init, init)} | "
                         + " | ".join(format_cell(index[task, init, f]) for f in spec.fractions) + " |")
        for init, base in COMPARISONS:
            row = {g.fraction: g for g in gains if (g.task, g.init, g.baseline) == (task, init, base)}
            if row:
                lines.append(f"| gain {SHORT_LABELS[init]} − {SHORT_LABELS[base]} | "
                             + " | ".join(format_gain(row[f]) for f in spec.fractions) + " |")
        lines.append("")
    lines += _verdicts(spec, gains)
    lines += [f"### Every run ({' / '.join(f's{s}' for s in spec.seeds)}; — missing)", "",
              f"| task | initialisation | {heads} |", "|---" + rule]
    for task in spec.tasks:
        for init in spec.inits:
            lines.append(f"| {task} | {INIT_LABELS.get(init, init)} | "
                         + " | ".join(_seed_values(index[task, init, f]) for f in spec.fractions) + " |")
    return "\n".join(lines) + "\n"


def study_points(cells: Sequence[StudyCell]) -> list[StudyPoint]:
    """The figure's points (in %) of ``cells``."""
    return [StudyPoint(c.task, f"{c.metric} (%)", INIT_LABELS.get(c.init, c.init), float(c.fraction),
                       None if c.mean is None else 100 * c.mean, None if c.spread is None else 100 * c.spread,
                       len(c.values), len(c.runs)) for c in cells]


def study_curves(runs_dir: Path, spec: StudySpec, metric: str = "loss") -> list[CurveRun]:
    """Every planned run's training ``metric`` from its dvclive folder (empty: no curve)."""
    out = []
    for task in spec.tasks:
        for init in spec.inits:
            for fraction in spec.fractions:
                for seed in spec.seeds:
                    live = run_path(runs_dir, task, init, fraction, seed) / "dvclive"
                    try:
                        steps, values = read_metrics(live).get(metric, ((), ()))
                    except ValueError:
                        steps, values = (), ()
                    out.append(CurveRun(task, INIT_LABELS.get(init, init), float(fraction), seed,
                                        tuple(float(s) for s in steps), tuple(float(v) for v in values)))
    return out


def write_report(metrics_dir: Path, out_dir: Path, spec: StudySpec, runs_dir: Path | None = None) -> list[StudyCell]:
    """Write ``out_dir/study.md`` and ``out_dir/study.png`` (and ``study-curves.png`` from
    ``runs_dir``'s dvclive folders); returns the cells. ValueError when no run is there at all."""
    runs = collect_runs(metrics_dir, spec)
    if all(r.status == "missing" for r in runs):
        raise ValueError(f"{metrics_dir}: none of the {len(runs)} planned study runs has metrics "
                         "(run the study_* stages first)")
    cells = study_cells(runs, spec)
    out_dir = Path(out_dir)
    write_file_atomic(out_dir / "study.md", markdown_report(spec, cells, study_gains(cells)))
    plot_study(study_points(cells), out_dir / "study.png")
    if runs_dir is not None:
        plot_study_curves(study_curves(runs_dir, spec), out_dir / "study-curves.png")
    return cells
