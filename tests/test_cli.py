"""The `gpicture` command line."""

from __future__ import annotations

import subprocess

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


def test_cli_lists_only_implemented_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "doctor" in result.output
