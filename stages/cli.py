"""The `gpicture` command: every pipeline step as a subcommand.

Each subcommand lives in its own module of ``stages/`` and is the same code path
that the DVC stage of the same name runs. Modules are imported only when their command
runs (or when ``--help`` lists them): a stage pays for torch, MinkowskiEngine, spconv or
the devkit only if it uses them, which matters when DVC starts one process per stage.
"""

from __future__ import annotations

import importlib
import sys

import click
import typer
from typer.core import TyperGroup

from gpicture.workers import Interrupted, ignore_signals, install_signal_handlers

# command -> (module, function), in the order `gpicture --help` lists them
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("stages.doctor", "doctor"),
    "synth": ("stages.synth", "synth"),
    "convert": ("stages.convert", "convert"),
    "merge": ("stages.convert", "merge"),
    "teacher-fit": ("stages.teacher_fit", "teacher_fit"),
    "teacher": ("stages.teacher", "teacher"),
    "teacher-probe": ("stages.teacher_probe", "teacher_probe"),
    "pretrain": ("stages.pretrain", "pretrain"),
    "cka": ("stages.cka", "cka"),
    "finetune": ("stages.finetune", "finetune"),
    "evaluate": ("stages.evaluate", "evaluate"),
    "show": ("stages.show", "show"),
    "verify": ("stages.verify", "verify"),
    "study-run": ("stages.study_run", "study_run"),
    "study": ("stages.study", "study"),
}


class LazyGroup(TyperGroup):
    """A typer group whose subcommands are built from their module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def invoke(self, ctx: click.Context) -> object:
        # Ctrl-C / SIGTERM (gpicture.workers.Interrupted, once `main` installed the handlers): the
        # command's `with` blocks have removed its temporaries on the way here; exit 130 / 143,
        # not click's "Aborted!" with 1.
        try:
            result = super().invoke(ctx)
            ignore_signals()  # done: a late Ctrl-C must not turn a finished run into a traceback at exit
            return result
        except Interrupted as exc:
            click.echo(f"interrupted ({exc}): stopped, temporary outputs removed", err=True)
            sys.exit(exc.exit_code)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, name = COMMANDS[cmd_name]
        single = typer.Typer(add_completion=False)
        single.command(cmd_name)(getattr(importlib.import_module(module), name))
        return typer.main.get_command(single)


app = typer.Typer(
    name="gpicture",
    cls=LazyGroup,
    help="GPICTURE self-supervised LiDAR pre-training: a reproducible pipeline.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """GPICTURE self-supervised LiDAR pre-training: a reproducible pipeline."""


def main() -> None:  # pragma: no cover  (console-script entry point)
    install_signal_handlers()
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
