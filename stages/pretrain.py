"""`gpicture pretrain`: GPICTURE pre-training of the student (single process or torchrun DDP)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console

from gpicture.params import ParamsError, load_section
from gpicture.training.engine import TrainConfig, setup_distributed
from gpicture.training.pretrain import DGPLConfig, MaskConfig, run_pretrain


def model_profile(params: Path, dataset: str) -> dict[str, Any]:
    """The model profile of a dataset selected by ``model.profile``."""
    sec = load_section(params, "model")
    name = sec.get("profile", "small")
    try:
        return dict(sec["profiles"][name][dataset])
    except KeyError:
        raise ParamsError(f"{params}: no model profile '{name}' for {dataset}") from None


def train_config(sec: dict[str, Any], epochs: int | None = None) -> TrainConfig:
    return TrainConfig(
        epochs=int(epochs if epochs is not None else sec["epochs"]), batch_size=int(sec["batch_size"]),
        lr=float(sec["lr"]), weight_decay=float(sec["weight_decay"]), moms=tuple(float(m) for m in sec["moms"]),
        pct_start=float(sec["pct_start"]), div_factor=float(sec["div_factor"]), grad_clip=float(sec["grad_clip"]),
        seed=int(sec.get("seed", 0)), num_workers=int(sec.get("num_workers", 0)), amp=bool(sec.get("amp", True)))


def pretrain(
    dataset: str = typer.Option(..., help="nuscenes or waymo."),
    store: Path | None = typer.Option(None, help="Voxel store [data/zarr/<dataset>/train.zarr]."),
    teacher: Path | None = typer.Option(None, help="Teacher store [data/teacher/<dataset>/train.zarr]."),
    out: Path | None = typer.Option(None, help="Output folder [models/pretrain/<dataset>]."),
    epochs: int | None = typer.Option(None, help="Override pretrain.epochs."),
    resume: bool = typer.Option(True, help="Continue from <out>/checkpoint.pt when present."),
    params: Path = typer.Option(Path("params.yaml"), help="The params file."),
) -> None:
    """Pre-train the student with I²Mask, CKA-guided hierarchical reconstruction and DGPL.
    For several processes: torchrun --nproc_per_node N $(which gpicture) pretrain ..."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    err = Console(stderr=True)
    try:
        sec = load_section(params, "pretrain")
        prof = model_profile(params, dataset)
        alpha = sec["alpha"]
        if sec.get("alpha_file"):
            alpha = yaml.safe_load(Path(sec["alpha_file"]).read_text())["alpha"]
        cfg = train_config(sec, epochs)
        m, d = sec["mask"], sec["dgpl"]
        mask = MaskConfig(int(m["n_clusters"]), tuple(m["n_partition"]), float(m["lambda_threshold"]), tuple(m["base_ratio"]))
        dgpl = DGPLConfig(float(d["delta"]), float(d["gamma"]), int(d["first_layers"]), int(d["probe_frames"]))
    except (ParamsError, KeyError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    store = store or Path(f"data/zarr/{dataset}/train.zarr")
    teacher = teacher or Path(f"data/teacher/{dataset}/train.zarr")
    out = out or Path(f"models/pretrain/{dataset}")
    dist = setup_distributed()
    try:
        metrics = run_pretrain(prof, store, teacher, out, cfg, tuple(alpha), mask, dgpl, dist,
                               true_points=int(sec["heads"]["true_points"]), pred_points=int(sec["heads"]["pred_points"]),
                               decoder_blocks=int(sec["decoder_blocks"]), resume=resume)
    except (ValueError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    if dist.is_main:
        Console().print(f"wrote {out}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()), soft_wrap=True)
