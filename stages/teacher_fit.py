"""`gpicture teacher-fit`: the teacher checkpoint every `gpicture teacher` run of a dataset reads.

Writes ``<out>/teacher.pt`` (a Res16UNet34C state dict in Seal's layout) and
``<out>/teacher.json`` (where it came from, its sha256, and for a stand-in the pool, the
objective and the training time), by the first that applies:

1. ``--checkpoint`` / ``teacher.checkpoint`` (the real Seal or SLidR weights): loaded
   strictly, then copied byte for byte (same sha256). No training.
2. ``teacher.share.<dataset>`` names another dataset: its fitted checkpoint is handed on
   unchanged (GPICTURE distils the Seal *nuScenes* weights on Waymo too).
3. ``teacher.init: random`` (tests only): a seeded random initialisation, saved.
4. Otherwise the stand-in: trained on the synthetic teacher pool (gpicture.training.teacher_fit).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from gpicture.atomic import claim_output, into_place, temp_sibling
from gpicture.data.spec import DATASETS
from gpicture.params import ParamsError, Section, load_section
from gpicture.teacher.cache import TeacherConfig
from gpicture.teacher.checkpoint import CheckpointError, file_sha256, save_checkpoint
from gpicture.training.teacher_fit import FitConfig, fit_config_dict, fit_standin, substitution_note
from gpicture.training.teacher_pool import PoolConfig, eval_classes, pool_tokens, simulate_pool

INITS = ("standin", "random")


def _hand_on(src: Path, tmp: Path, meta: dict) -> dict:
    """Copy a checkpoint unchanged into ``tmp`` after a strict load; its metadata."""
    from gpicture.teacher import SealTeacher

    t = SealTeacher.from_checkpoint(src)  # strict: refuses a file that does not fit Res16UNet34C
    shutil.copyfile(src, tmp / "teacher.pt")
    sha = file_sha256(tmp / "teacher.pt")
    if sha != t.sha256:
        raise OSError(f"{src}: copy differs from the source (sha256 {sha} != {t.sha256})")
    inner = t.metadata or {}
    return {**meta, "init": t.kind, "sha256": sha, "source": str(src), "description": t.description,
            **({"source_metadata": inner} if inner else {})}


def _typed(sec: Section, key: str, default: object) -> object:
    """``key`` of ``sec`` checked as the type of its default (an integer where an integer is meant)."""
    if isinstance(default, bool):
        return sec.flag(key)
    if isinstance(default, int):
        return sec.integer(key)
    if isinstance(default, float):
        return sec.number(key)
    return sec.text(key) if isinstance(default, str) else sec.raw(key)


def _fit(sec: Section, tcfg: TeacherConfig, tmp: Path, meta: dict, err: Console) -> dict:
    import torch

    from gpicture.teacher.res16unet import Res16UNet34C

    std = sec.sub("standin") if sec.raw("standin", None) is not None else Section(sec.path, "teacher.standin", {})
    p = std.sub("pool") if std.raw("pool", None) is not None else Section(sec.path, "teacher.standin.pool", {})
    pool = PoolConfig(scenes=p.integer("scenes", 1, default=8), frames=p.integer("frames", 1, default=4),
                      seed=p.integer("seed", 0, default=0), density=p.positive("density", default=0.6),
                      workers=p.integer("workers", 1, default=2))
    defaults = asdict(FitConfig())
    unknown = sorted(set(std.values) - set(defaults) - {"pool"})
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not keys of teacher.standin (known: pool, {', '.join(defaults)})")
    fit = FitConfig(**{k: _typed(std, k, defaults[k]) for k in std.values if k != "pool"})
    fit.validate()
    err.print(f"teacher-fit: simulating the teacher pool ({pool.scenes} scenes x {pool.frames} keyframes, "
              f"seed stream {pool.seed})", soft_wrap=True)
    frames = simulate_pool(pool)
    names, _ = eval_classes()
    torch.manual_seed(fit.seed)
    net = Res16UNet34C(in_channels=1, out_channels=64, bn_momentum=0.05)
    with Progress(TextColumn("teacher-fit"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task("steps", total=fit.steps, loss="-")
        result = fit_standin(net, frames, len(names) - 1, tcfg, fit,
                             progress=lambda s, n, loss: bar.update(task, completed=s, loss=f"{loss:.3f}"))
    k = max(1, len(result.losses) // 10)
    meta = {**meta, "init": "standin", "pool_scenes": pool.scenes, "pool_frames": len(frames),
            "pool": {**asdict(pool), "scene_names": pool.scene_names(), "scene_seeds": pool.scene_seeds(),
                     **pool_tokens(pool)},
            "objective": substitution_note(fit), "fit": fit_config_dict(fit), "classes": names[1:],
            "train_seconds": round(result.seconds, 1),
            "loss_first": round(sum(result.losses[:k]) / k, 4), "loss_last": round(sum(result.losses[-k:]) / k, 4)}
    meta["sha256"] = save_checkpoint(tmp / "teacher.pt", result.state_dict, meta)
    meta["description"] = f"stand-in teacher (trained on synthetic pool, {pool.scenes} scenes)"
    return meta


def teacher_fit(
    dataset: str = typer.Option(..., help=" or ".join(DATASETS) + "."),
    out: Path | None = typer.Option(None, help="Output folder (default: models/teacher/<dataset>)."),
    checkpoint: Path | None = typer.Option(None, help="A Seal / SLidR Res16UNet34C file to hand on unchanged "
                                                      "(params: teacher.checkpoint)."),
    init: str | None = typer.Option(None, help="With no checkpoint: standin (train on the synthetic pool) or "
                                               "random (tests only) (params: teacher.init)."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier teacher-fit folder at --out (anything "
                                                    "else there is refused, never deleted)."),
    params: Path = typer.Option(Path("params.yaml"), help="The params file."),
) -> None:
    """Make the teacher checkpoint of a dataset: hand on Seal's weights, or train the stand-in."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    err = Console(stderr=True)
    out = out or Path(f"models/teacher/{dataset}")
    try:
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r} (one of {', '.join(DATASETS)})")
        sec = load_section(params, "teacher")
        init = init or str(sec.get("init", "standin"))
        if init not in INITS:
            raise ValueError(f"teacher.init must be one of {INITS}, got {init!r}")
        tcfg = TeacherConfig.from_params(sec, dataset)
        tcfg.validate()
        ckpt = checkpoint if checkpoint is not None else sec.get("checkpoint")
        share = (sec.get("share") or {}).get(dataset)
        meta = {"dataset": dataset, "teacher": "Res16UNet34C (MinkowskiEngine), in 1 -> out 64, L2-normalised",
                "input_convention": tcfg.convention()}
        # one writer per folder; --force replaces only a teacher-fit folder (gpicture.atomic)
        with claim_output(out, "teacher-model", force=force) as lock, \
                into_place(temp_sibling(out), out, "teacher-model", lock) as tmp:
            if ckpt is not None:
                meta = _hand_on(Path(ckpt), tmp, meta)
            elif share:
                src = out.parent / share / "teacher.pt"
                if not src.is_file():
                    raise OSError(f"{src}: the {share} teacher this dataset shares (teacher.share.{dataset}) is not "
                                  f"fitted yet; run gpicture teacher-fit --dataset {share} first")
                meta = {**_hand_on(src, tmp, meta), "shared_from": share}
            elif init == "random":
                import torch

                from gpicture.teacher.res16unet import Res16UNet34C

                seed = Section(params, "teacher", sec).integer("seed", 0, default=0)
                torch.manual_seed(seed)
                net = Res16UNet34C(in_channels=1, out_channels=64, bn_momentum=0.05)
                meta = {**meta, "init": "random", "seed": seed}
                meta["sha256"] = save_checkpoint(tmp / "teacher.pt", net.state_dict(), meta)
                meta["description"] = f"RANDOM INITIALISATION (seed {seed}), for tests"
            elif dataset != "nuscenes":
                raise ValueError(f"the stand-in's pool is synthetic nuScenes (raw 0..255 intensities); a {dataset} "
                                 f"teacher shares the nuScenes one (teacher.share.{dataset}: nuscenes, as GPICTURE "
                                 "distils Seal's nuScenes weights on Waymo) or takes teacher.checkpoint")
            else:
                meta = _fit(Section(params, "teacher", sec), tcfg, tmp, meta, err)
            (tmp / "teacher.json").write_text(json.dumps(meta, indent=1))
    except (ParamsError, ValueError, OSError, CheckpointError, TypeError, FloatingPointError) as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    extra = f", trained in {meta['train_seconds']} s (loss {meta['loss_first']} -> {meta['loss_last']})" \
        if meta.get("init") == "standin" and "train_seconds" in meta else ""
    Console().print(f"wrote {out}/teacher.pt: {meta['description']}, sha256 {meta['sha256'][:12]}{extra}",
                    soft_wrap=True)


