"""The `gpicture` command: every pipeline step as a subcommand.

Each subcommand lives in its own module of ``stages/`` and is the same code path
that the DVC stage of the same name runs.
"""

from __future__ import annotations

import typer

from stages.cka import cka
from stages.convert import convert, merge
from stages.doctor import doctor
from stages.evaluate import evaluate
from stages.finetune import finetune
from stages.pretrain import pretrain
from stages.show import show
from stages.study import study
from stages.synth import synth
from stages.teacher import teacher
from stages.teacher_probe import teacher_probe

app = typer.Typer(
    name="gpicture",
    help="GPICTURE self-supervised LiDAR pre-training: a reproducible pipeline.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """GPICTURE self-supervised LiDAR pre-training: a reproducible pipeline."""


app.command("doctor")(doctor)
app.command("synth")(synth)
app.command("convert")(convert)
app.command("merge")(merge)
app.command("teacher")(teacher)
app.command("teacher-probe")(teacher_probe)
app.command("pretrain")(pretrain)
app.command("cka")(cka)
app.command("finetune")(finetune)
app.command("evaluate")(evaluate)
app.command("show")(show)
app.command("study")(study)


def main() -> None:  # pragma: no cover  (console-script entry point)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
