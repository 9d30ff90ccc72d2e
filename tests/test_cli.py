"""The `gpicture` command line."""

from __future__ import annotations

import re
import subprocess

import typer
from typer.testing import CliRunner

from stages.cli import app


def test_doctor_reports_every_dependency_working(venv_bin) -> None:
    proc = subprocess.run([str(venv_bin / "gpicture"), "doctor"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("python", "torch", "spconv", "MinkowskiEngine", "torch-scatter", "zarr",
                 "numcodecs", "dvc", "nuscenes-devkit", "waymo protos", "native ops"):
        assert name in proc.stdout
    assert "FAIL" not in proc.stdout
    assert "all dependencies work" in proc.stdout


def test_doctor_exits_nonzero_naming_the_broken_dependency(monkeypatch) -> None:
    import gpicture.doctor as doc

    def broken() -> tuple[str, str]:
        raise ImportError("No module named 'torch_scatter'")

    checks = [c if c[0] != "torch-scatter" else ("torch-scatter", broken, True) for c in doc.CHECKS]
    monkeypatch.setattr(doc, "CHECKS", checks)
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 1
    assert "broken: torch-scatter" in result.output


EXPECTED_COMMANDS = {"doctor", "synth", "convert", "merge", "teacher", "teacher-fit", "teacher-probe", "pretrain", "cka", "finetune",
                     "evaluate", "show", "study-run", "study"}


def _listed_commands(help_text: str) -> list[str]:
    """The command names of the "Commands" panel of typer's rich --help output."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if "Commands" in line)
    names = []
    for line in lines[start + 1:]:
        if line.lstrip().startswith(("╰", "+", "└")):
            break
        m = re.match(r"^[│|]\s+([a-z][\w-]*)(\s{2,}|\s*[│|]?$)", line)
        if m:
            names.append(m.group(1))
    return names


def test_cli_lists_only_implemented_commands() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    listed = _listed_commands(result.output)
    assert sorted(listed) == sorted(EXPECTED_COMMANDS), listed  # each once, nothing else
    group = typer.main.get_command(app)
    assert set(group.list_commands(None)) == EXPECTED_COMMANDS  # none hidden either
    for name in listed:
        sub = runner.invoke(app, [name, "--help"], terminal_width=200)
        assert sub.exit_code == 0, f"{name} --help: {sub.output}"
        assert f"Usage: root {name}" in sub.output or f" {name} [OPTIONS]" in sub.output, sub.output
    unknown = runner.invoke(app, ["not-a-command"])
    assert unknown.exit_code == 2
