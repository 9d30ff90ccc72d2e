"""`gpicture cka`: the CKA-guided reconstruction weights from pre-trained and fine-tuned students."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml
from rich.console import Console

from gpicture.atomic import write_file_atomic
from gpicture.provenance import provenance
from gpicture.training.cka_alpha import cka_alpha


def cka(
    pretrained: Path = typer.Option(..., help="The pre-trained student (student.pt)."),
    finetuned: list[Path] = typer.Option(..., help="Fine-tuned models (models/<task>/<dataset>/model.pt) or "
                                                  "student checkpoints; repeat the option."),
    store: Path = typer.Option(..., help="Voxel store whose first frames are the probe batch."),
    out: Path = typer.Option(Path("alpha.yaml"), help="YAML file to write ({alpha: [...]}); point "
                                                       "params.yaml pretrain.alpha_file at it."),
    frames: int = typer.Option(2, min=1, help="Probe frames."),
) -> None:
    """alpha_l = mean over the fine-tuned models of linear CKA(pre-trained layer l, fine-tuned layer l)."""
    try:
        alpha = cka_alpha(pretrained, list(finetuned), store, frames)
    except (ValueError, OSError) as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    write_file_atomic(out, yaml.safe_dump({"alpha": alpha, "pretrained": str(pretrained),
                                           "finetuned": [str(p) for p in finetuned], "probe_frames": frames,
                                           "provenance": provenance()},
                                          sort_keys=False))
    Console().print(f"wrote {out}: alpha {alpha}", soft_wrap=True)
