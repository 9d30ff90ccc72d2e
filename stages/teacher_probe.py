"""`gpicture teacher-probe`: how semantic the cached teacher features are (metrics/<dataset>/teacher.json)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from gpicture.atomic import write_file_atomic
from gpicture.data.spec import DATASETS
from gpicture.params import ParamsError, Section
from gpicture.provenance import provenance
from gpicture.teacher.cache import TeacherStore
from gpicture.training.teacher_probe import (
    cluster_purity,
    labelled_features,
    linear_probe,
    masking_ratios,
)


def teacher_probe(
    dataset: str = typer.Option(..., help=" or ".join(DATASETS) + "."),
    train_store: Path | None = typer.Option(None, help="Voxel store the probe is trained on "
                                                       "(default: data/zarr/<dataset>/train.zarr)."),
    train_teacher: Path | None = typer.Option(None, help="Its teacher store (default: data/teacher/<dataset>/train.zarr)."),
    store: Path | None = typer.Option(None, help="Voxel store the figures are measured on "
                                                 "(default: data/zarr/<dataset>/val.zarr)."),
    teacher: Path | None = typer.Option(None, help="Its teacher store (default: data/teacher/<dataset>/val.zarr)."),
    out: Path | None = typer.Option(None, help="Metrics JSON (default: metrics/<dataset>/teacher.json)."),
    params: Path = typer.Option(Path("params.yaml"),
                                help="The params file (pretrain.mask.n_clusters: the K of the purity)."),
) -> None:
    """Cluster purity (k-means, the I²Mask K) and linear-probe mIoU of the teacher's features against the labels."""
    err = Console(stderr=True)
    train_store = train_store or Path(f"data/zarr/{dataset}/train.zarr")
    train_teacher = train_teacher or Path(f"data/teacher/{dataset}/train.zarr")
    store = store or Path(f"data/zarr/{dataset}/val.zarr")
    teacher = teacher or Path(f"data/teacher/{dataset}/val.zarr")
    out = out or Path(f"metrics/{dataset}/teacher.json")
    try:
        mask = Section.load(params, "pretrain", "mask")  # the pre-training's I2Mask settings, checked before the work
        k = mask.integer("n_clusters", 1, default=8)
        partition = list(mask.integers("n_partition", 1) if "n_partition" in mask else (3, 3, 2))
        threshold = mask.number("lambda_threshold", 0.0, 1.0, default=0.6)
        base = list(mask.numbers("base_ratio", 0.0, 1.0, high_open=True) if "base_ratio" in mask else (0.9, 0.45, 0.0))
        train = labelled_features(train_store, train_teacher)
        val = labelled_features(store, teacher)
        purity = cluster_purity(val, k)
        probe = linear_probe(train, val)
        ratios = masking_ratios(val, k, partition, threshold, base)
        settings = TeacherStore.open(teacher).settings
        description = settings.get("teacher_description") or (
            f"random initialisation (seed {settings['random_init_seed']})" if settings.get("random_init")
            else f"checkpoint {settings.get('checkpoint')} (sha256 {settings.get('checkpoint_sha256')})")
    except (ParamsError, ValueError, OSError, KeyError) as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    metrics = {"cluster_purity": purity, "probe_mIoU": probe.miou, "k": k, "val_voxels": len(val.labels),
               "train_voxels": len(train.labels), "per_class_probe_IoU": probe.per_class, "per_class_masking_ratio": ratios,
               "teacher": description}
    write_file_atomic(out, json.dumps({**metrics, "provenance": provenance()}, indent=1))
    Console().print(f"wrote {out}: cluster purity {purity:.3f} (K={k}), linear-probe mIoU {probe.miou:.3f}"
                    f" — {description}", soft_wrap=True)
