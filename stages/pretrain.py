"""`gpicture pretrain`: GPICTURE pre-training of the student (single process or torchrun DDP)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
import yaml
from rich.console import Console

from gpicture.params import ParamsError, Section, check_float, check_list, model_profile
from gpicture.training.engine import DistInfo, TrainConfig
from gpicture.training.launch import error_message, launch
from gpicture.training.pretrain import DGPLConfig, MaskConfig, run_pretrain
from gpicture.training.run_folder import PRETRAIN_RUN, claim_run


def read_alpha(sec: Section) -> tuple[float, ...]:
    """``pretrain.alpha`` (one reconstruction weight >= 0 per supervised layer), or the ``alpha``
    of the file ``pretrain.alpha_file`` names (written by `gpicture cka`) when set."""
    alpha_file = sec.raw("alpha_file", None)
    if alpha_file is None:
        return sec.numbers("alpha", 0.0)
    path = Path(sec.text("alpha_file"))
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{sec.where('alpha_file')}: {path} does not exist (run `gpicture cka`)") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from None
    where = f"{path}: alpha"
    if not isinstance(data, dict) or "alpha" not in data:
        raise ParamsError(f"{path}: no 'alpha' list (pretrain.alpha_file takes a file written by `gpicture cka`)")
    return tuple(check_float(v, f"{where}[{i}]", 0.0) for i, v in enumerate(check_list(data["alpha"], where)))


def pretrain(
    dataset: str = typer.Option(..., help="nuscenes or waymo."),
    store: Path | None = typer.Option(None, help="Voxel store (default: data/zarr/<dataset>/<split>.zarr, "
                                                 "pretrain.split of the params: the unlabelled pretrain split)."),
    teacher: Path | None = typer.Option(None, help="Teacher store (default: data/teacher/<dataset>/<split>.zarr)."),
    out: Path | None = typer.Option(None, help="Output folder (default: models/pretrain/<dataset>)."),
    epochs: int | None = typer.Option(None, help="Override pretrain.epochs."),
    resume: bool = typer.Option(True, help="Continue from <out>/checkpoint.pt when present."),
    teacher_targets: bool | None = typer.Option(None, help="Reconstruct the teacher features (params: "
                                                           "pretrain.teacher_targets); --no-teacher-targets is the "
                                                           "ablation with point targets only."),
    procs: int | None = typer.Option(None, help="Data-parallel processes, one thread each (params: pretrain.procs; "
                                                "batch_size is per process)."),
    force: bool = typer.Option(False, "--force", help="Start afresh in an existing pre-training run folder at --out "
                                                    "(its checkpoint, student.pt and logs removed first); a folder "
                                                    "holding anything else is refused, never deleted."),
    params: Path = typer.Option(Path("params.yaml"), help="The params file."),
) -> None:
    """Pre-train the student with I²Mask, CKA-guided hierarchical reconstruction and DGPL.
    Several processes: --procs N on one machine, or torchrun --nproc_per_node N $(which gpicture) pretrain ..."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    err = Console(stderr=True)
    try:
        profile, prof = model_profile(params, dataset)
        sec = Section.load(params, "pretrain", profile=profile, dataset=dataset)
        alpha = read_alpha(sec)
        cfg = TrainConfig.from_section(sec, epochs)
        m, d, heads = sec.sub("mask"), sec.sub("dgpl"), sec.sub("heads")
        mask = MaskConfig.from_section(m)
        dgpl = DGPLConfig(d.number("delta", 0.0), d.positive("gamma"), d.integer("first_layers", 1),
                          d.integer("probe_frames", 1))
        split = sec.text("split", default="pretrain")
        kwargs = dict(true_points=heads.integer("true_points", 1), pred_points=heads.integer("pred_points", 1),
                      decoder_blocks=sec.integers("decoder_blocks", 1), resume=resume,
                      frame_fraction=sec.fraction("frame_fraction", default=1.0), dataset=dataset,
                      teacher_targets=sec.flag("teacher_targets", default=True, override=teacher_targets,
                                               option="--teacher-targets"))
        n_procs = sec.integer("procs", 1, default=1, override=procs, option="--procs")
    except (ParamsError, KeyError, OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    store = store or Path(f"data/zarr/{dataset}/{split}.zarr")
    teacher = teacher or Path(f"data/teacher/{dataset}/{split}.zarr")
    out = out or Path(f"models/pretrain/{dataset}")
    try:
        with claim_run(out, PRETRAIN_RUN, force=force) as folder:  # one writer per run folder, ours (marked)
            metrics = launch(pretrain_rank, (prof, store, teacher, folder, cfg, alpha, mask, dgpl, kwargs), n_procs)
    except (ValueError, OSError) as exc:
        err.print(f"[red]error:[/red] {error_message(exc)}", soft_wrap=True)
        raise typer.Exit(2) from None
    if metrics is not None:  # None on the ranks > 0 of a torchrun launch
        Console().print(f"wrote {out}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()), soft_wrap=True)


def pretrain_rank(dist: DistInfo, prof, store, teacher, out, cfg, alpha, mask, dgpl, kwargs) -> dict[str, float] | None:
    """One process's part of pre-training (gpicture.training.launch): rank 0 returns the metrics."""
    metrics = run_pretrain(prof, store, teacher, out, cfg, alpha, mask, dgpl, dist, **kwargs)
    return metrics if dist.is_main else None
