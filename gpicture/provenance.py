"""What a result was made with: the git commit and the package versions.

Every metrics file and checkpoint of the pipeline records :func:`provenance` (``"provenance"``
key), so a number can be traced to the code and the stack that produced it; ``gpicture
doctor`` compares the installed versions with the committed lock (:func:`locked_versions`).
Reading them costs milliseconds: the commit is read from ``.git`` without running git, the
versions from the installed distributions' metadata without importing them.
"""

from __future__ import annotations

import functools
import platform
import re
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# The packages whose versions a result depends on (the rest are in the lock).
KEY_PACKAGES = ("torch", "numpy", "spconv-cu118", "MinkowskiEngine", "torch-scatter", "zarr", "numcodecs",
                "nuscenes-devkit", "waymo-open-dataset-tf-2-12-0", "dvc", "dvclive", "scikit-learn", "gpicture")
LOCK_FILES = ("requirements.lock", "uv.lock")


def normalize(name: str) -> str:
    """PEP 503 normalised distribution name (``MinkowskiEngine`` -> ``minkowskiengine``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _git_dir(repo: Path) -> Path | None:
    git = repo / ".git"
    if git.is_file():  # a worktree or submodule: "gitdir: <path>"
        target = git.read_text().partition("gitdir:")[2].strip()
        return (repo / target).resolve() if target else None
    return git if git.is_dir() else None


@functools.cache
def git_commit(repo: Path = REPO) -> str | None:
    """The commit checked out in ``repo`` (40 hex digits), None outside a git checkout."""
    git = _git_dir(repo)
    if git is None:
        return None
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head or None
        ref = head.partition(":")[2].strip()
        common = git / "commondir"  # a worktree's refs live in the main repository's .git
        bases = [git] + ([(git / common.read_text().strip()).resolve()] if common.is_file() else [])
        for base in bases:
            if (base / ref).is_file():
                return (base / ref).read_text().strip()
            packed = base / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    sha, _, name = line.partition(" ")
                    if name.strip() == ref:
                        return sha
    except OSError:
        return None
    return None


def installed_versions(names: tuple[str, ...] | None = None) -> dict[str, str]:
    """Installed distribution versions by normalised name (``names``: only those, when installed)."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            found.setdefault(normalize(name), dist.version)
    if names is None:
        return found
    return {normalize(n): found[normalize(n)] for n in names if normalize(n) in found}


@functools.cache
def provenance() -> dict[str, Any]:
    """The record a metrics file or checkpoint carries: git commit, Python, key package versions
    (one ``name==version ...`` string: one column in ``dvc metrics show``, not thirteen)."""
    return {"git_commit": git_commit(), "python": platform.python_version(),
            "packages": " ".join(f"{n}=={v}" for n, v in installed_versions(KEY_PACKAGES).items())}


def lock_file(repo: Path = REPO) -> Path | None:
    """The committed lock of the environment, if this checkout has one."""
    return next((repo / f for f in LOCK_FILES if (repo / f).is_file()), None)


def locked_versions(path: Path) -> dict[str, str]:
    """``{normalised name: version}`` pinned by a lock: a requirements file (``name==version``
    lines, hashes and markers ignored) or a ``uv.lock`` (``[[package]]`` tables)."""
    text = Path(path).read_text()
    if Path(path).suffix == ".lock" and text.lstrip().startswith(("version =", "version=", "requires-python")):
        return {normalize(p["name"]): str(p["version"]) for p in tomllib.loads(text).get("package", [])
                if "name" in p and "version" in p}
    pins: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;\\]+)", line)
        if m:
            pins[normalize(m.group(1))] = m.group(2)
    return pins


def drift(locked: dict[str, str], installed: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """``{name: (locked, installed or None)}`` for every locked package installed at another
    version, or not at all (a local version suffix such as ``+cpu`` counts as the same)."""
    out: dict[str, tuple[str, str | None]] = {}
    for name, want in locked.items():
        have = installed.get(name)
        if have is None or have.split("+")[0] != want.split("+")[0]:
            out[name] = (want, have)
    return out
