"""The code's structure as the design draws it: imports flow down the layers (import-linter),
dataset names are compared only in gpicture/data, no module is two concepts long."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gpicture"


def test_import_layers() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is not installed (pyproject dev dependencies)"
    res = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "2 kept, 0 broken" in res.stdout


def _string_constants_outside_docs(tree: ast.AST) -> list[tuple[int, str]]:
    """String literals that are neither docstrings nor inside f-strings / messages."""
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    in_fstring = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in ast.walk(n)}
    in_raise = {id(v) for n in ast.walk(tree) if isinstance(n, ast.Raise) for v in ast.walk(n)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs | in_fstring | in_raise]


def test_dataset_names_only_in_data() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if (PACKAGE / "data") in path.parents:
            continue
        for line, value in _string_constants_outside_docs(ast.parse(path.read_text())):
            if value in ("nuscenes", "waymo"):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {value!r}")
    assert not offenders, "dataset names compared outside gpicture/data:\n" + "\n".join(offenders)


def test_no_module_over_400_lines() -> None:
    long = [f"{p.relative_to(ROOT)}: {n}" for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400]
    assert not long, "modules past 400 lines (usually two concepts):\n" + "\n".join(long)


def test_no_function_level_imports_of_gpicture() -> None:
    """Function-level imports of the package itself only dodge cycles; the layers forbid
    those, so every gpicture import is at module level (``TYPE_CHECKING`` blocks aside), except
    where marked ``# lazy:`` (a heavy dependency kept off a fast path)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for sub in ast.walk(node):
                mod = sub.module if isinstance(sub, ast.ImportFrom) else None
                if isinstance(sub, ast.Import):
                    mod = sub.names[0].name
                if mod and mod.startswith("gpicture") and "# lazy:" not in lines[sub.lineno - 1]:
                    offenders.append(f"{path.relative_to(ROOT)}:{sub.lineno}: {mod}")
    assert not offenders, "function-level gpicture imports:\n" + "\n".join(sorted(set(offenders)))
