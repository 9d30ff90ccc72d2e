"""requirements.lock matches pyproject.toml, pins everything with hashes, and is what is installed.

Offline and instant: the lock's header records a hash of pyproject's dependency tables
(scripts/lock.py), so a dependency added without `make lock` fails here, while edits to the
rest of pyproject.toml (pytest options, the import-linter contracts) leave the lock valid.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
LOCK_PY = REPO / "scripts" / "lock.py"
PIN = re.compile(r"^([a-z0-9][a-z0-9._-]*)==([^\s\\;]+)")


def run_lock(*args: str, root: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LOCK_PY), "--root", str(root), *args], capture_output=True, text=True, check=False)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_blocks() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, its --hash values), over every section of the lock."""
    out: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in (REPO / "requirements.lock").read_text().splitlines():
        m = PIN.match(line)
        if m:
            name = m.group(1)
            out[name] = (m.group(2), [])
        elif name and line.strip().startswith("--hash=sha256:"):
            out[name][1].append(line.strip().split(":", 1)[1].rstrip(" \\"))
        else:
            name = None
    return out


def direct_requirements() -> list[Requirement]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    lock = data["tool"]["gpicture"]["lock"]
    reqs = [*data["project"]["dependencies"], *data["project"]["optional-dependencies"]["dev"]]
    reqs += [*lock["requires"], *lock["no-deps"], *lock["source-builds"]]
    return [Requirement(r) for r in reqs]


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """pyproject.toml and requirements.lock of this checkout in a temporary folder."""
    for name in ("pyproject.toml", "requirements.lock"):
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def test_the_committed_lock_matches_pyproject() -> None:
    done = run_lock("check")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "old, new",
    [
        ('    "matplotlib>=3.8",\n', '    "matplotlib>=3.8",\n    "six>=1.16",\n'),  # a new dependency
        ('"pytest>=8", ', '"pytest>=8", "hypothesis>=6", '),  # a new dev tool
        ('"zarr>=3.1,<=3.1.5"', '"zarr>=3.1"'),  # a widened range
        ('"waymo-open-dataset-tf-2-12-0==1.6.7"', '"waymo-open-dataset-tf-2-12-0==1.6.6"'),  # a no-deps pin
    ],
    ids=["dependency", "dev-extra", "range", "no-deps"],
)
def test_the_check_fails_when_dependencies_change_without_make_lock(project_copy: Path, old: str, new: str) -> None:
    pyproject = project_copy / "pyproject.toml"
    text = pyproject.read_text()
    assert old in text
    pyproject.write_text(text.replace(old, new, 1))
    done = run_lock("check", root=project_copy)
    assert done.returncode == 1
    assert str(project_copy / "requirements.lock") in done.stderr
    assert "out of date" in done.stderr and "make lock" in done.stderr


def test_the_check_ignores_the_rest_of_pyproject(project_copy: Path) -> None:
    pyproject = project_copy / "pyproject.toml"
    text = pyproject.read_text()
    assert "timeout = 900" in text
    pyproject.write_text(text.replace("timeout = 900", "timeout = 1200") + "\n# a comment\n")
    done = run_lock("check", root=project_copy)
    assert done.returncode == 0, done.stderr


def test_the_check_names_a_missing_or_headerless_lock(project_copy: Path) -> None:
    lock = project_copy / "requirements.lock"
    lock.write_text("".join(line for line in lock.read_text().splitlines(True) if "inputs-sha256" not in line))
    done = run_lock("check", root=project_copy)
    assert done.returncode == 1 and str(lock) in done.stderr and "inputs-sha256" in done.stderr
    lock.unlink()
    done = run_lock("check", root=project_copy)
    assert done.returncode == 1 and str(lock) in done.stderr and "make lock" in done.stderr


def test_every_package_is_pinned_with_hashes_and_satisfies_pyproject() -> None:
    blocks = lock_blocks()
    assert len(blocks) > 100  # the whole transitive closure, not just the direct dependencies
    unhashed = [name for name, (_, hashes) in blocks.items() if not hashes]
    assert not unhashed, f"pins without a hash: {unhashed}"
    for req in direct_requirements():
        name = normalize(req.name)
        assert name in blocks, f"{req} is not in requirements.lock"
        assert req.specifier.contains(blocks[name][0], prereleases=True), f"{req}: locked {blocks[name][0]}"
    assert blocks["torch"][0] == "2.13.0+cpu"  # the CPU wheel, not a CUDA build of several GB
    assert Version(blocks["numpy"][0]) < Version("2")  # the nuscenes-devkit needs numpy<2
    assert Version(blocks["zarr"][0]) <= Version("3.1.5")
    assert "rerun-sdk" in blocks and "waymo-open-dataset-tf-2-12-0" in blocks
    assert "tensorflow" not in blocks  # the Waymo protos' own pins stay out


def test_the_sync_file_swaps_source_builds_for_their_wheels(tmp_path: Path) -> None:
    out = tmp_path / "sync.txt"
    done = run_lock("sync-file", str(out), "--wheel", "/w/torch_scatter-2.1.2-cp311-cp311-linux_x86_64.whl")
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    pinned = {m.group(1) for m in map(PIN.match, text.splitlines()) if m}
    assert {"torch", "rerun-sdk", "waymo-open-dataset-tf-2-12-0"} <= pinned
    assert not pinned & {"torch-scatter", "minkowskiengine"}  # built locally, installed as wheels
    assert "/w/torch_scatter-2.1.2-cp311-cp311-linux_x86_64.whl" in text.splitlines()
    assert f"-e {REPO}" in text.splitlines()


def test_the_running_environment_is_the_lock() -> None:
    """`make setup` syncs .venv to the lock: every locked package is installed at its version."""
    drift = {}
    for name, (version, _) in lock_blocks().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is None or Version(installed) != Version(version):
            drift[name] = (version, installed)
    assert not drift, f"{sys.prefix} differs from requirements.lock (locked, installed): {drift}; run `make setup`"
