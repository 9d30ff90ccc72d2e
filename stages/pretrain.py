"""`gpicture pretrain`: GPICTURE pre-training of the student (single process or torchrun DDP)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
import yaml
from rich.console import Console

from gpicture.params import ParamsError, load_section, model_profile, with_profile
from gpicture.training.engine import DistInfo, TrainConfig
from gpicture.training.launch import claim_run, launch
from gpicture.training.pretrain import DGPLConfig, MaskConfig, run_pretrain


def _blocks(value: int | list[int]) -> tuple[int, ...]:
    """``pretrain.decoder_blocks``: blocks per decoder stage (a bare int: one stage)."""
    return (int(value),) if isinstance(value, int) else tuple(int(v) for v in value)


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
    params: Path = typer.Option(Path("params.yaml"), help="The params file."),
) -> None:
    """Pre-train the student with I²Mask, CKA-guided hierarchical reconstruction and DGPL.
    Several processes: --procs N on one machine, or torchrun --nproc_per_node N $(which gpicture) pretrain ..."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    err = Console(stderr=True)
    try:
        profile, prof = model_profile(params, dataset)
        sec = with_profile(load_section(params, "pretrain"), profile, dataset)
        alpha = sec["alpha"]
        if sec.get("alpha_file"):
            alpha = yaml.safe_load(Path(sec["alpha_file"]).read_text())["alpha"]
        cfg = TrainConfig.from_params(sec, epochs)
        m, d = sec["mask"], sec["dgpl"]
        mask = MaskConfig(int(m["n_clusters"]), tuple(m["n_partition"]), float(m["lambda_threshold"]), tuple(m["base_ratio"]))
        dgpl = DGPLConfig(float(d["delta"]), float(d["gamma"]), int(d["first_layers"]), int(d["probe_frames"]))
    except (ParamsError, KeyError, OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    split = str(sec.get("split", "pretrain"))
    store = store or Path(f"data/zarr/{dataset}/{split}.zarr")
    teacher = teacher or Path(f"data/teacher/{dataset}/{split}.zarr")
    out = out or Path(f"models/pretrain/{dataset}")
    kwargs = dict(true_points=int(sec["heads"]["true_points"]), pred_points=int(sec["heads"]["pred_points"]),
                  decoder_blocks=_blocks(sec["decoder_blocks"]), resume=resume,
                  frame_fraction=float(sec.get("frame_fraction", 1.0)), dataset=dataset,
                  teacher_targets=bool(sec.get("teacher_targets", True) if teacher_targets is None else teacher_targets))
    try:
        with claim_run(out):  # one writer per run folder
            metrics = launch(pretrain_rank, (prof, store, teacher, out, cfg, tuple(alpha), mask, dgpl, kwargs),
                             int(procs if procs is not None else sec.get("procs", 1)))
    except (ValueError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    if metrics is not None:  # None on the ranks > 0 of a torchrun launch
        Console().print(f"wrote {out}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()), soft_wrap=True)


def pretrain_rank(dist: DistInfo, prof, store, teacher, out, cfg, alpha, mask, dgpl, kwargs) -> dict[str, float] | None:
    """One process's part of pre-training (gpicture.training.launch): rank 0 returns the metrics."""
    metrics = run_pretrain(prof, store, teacher, out, cfg, alpha, mask, dgpl, dist, **kwargs)
    return metrics if dist.is_main else None
