"""The environment lock, requirements.lock: every package of .venv pinned with its hashes.

`make lock` writes it with uv from pyproject.toml; scripts/setup.sh installs exactly it
(`uv pip sync`, hashes checked); tests/test_lock.py and `gpicture doctor` compare it with
pyproject.toml and with what is installed. Runs on a bare python3.11 (stdlib only), since
setup reads it before the venv exists.

The lock has three sections, each in `uv pip compile --generate-hashes` format:

- resolved: pyproject's [project] dependencies, the dev extra and [tool.gpicture.lock]
  `requires`, resolved together for CPython 3.11 on x86_64 Linux (torch from the CPU wheel
  in /opt/wheels, `torch==2.13.0+cpu`);
- no-deps: [tool.gpicture.lock] `no-deps`, locked without their declared dependencies
  (the Waymo protos pin TensorFlow's stack, rerun-sdk declares numpy>=2);
- source-builds: [tool.gpicture.lock] `source-builds`, the sdists (with their hashes) that
  setup builds into the wheel cache.

Its header records `inputs-sha256`, a hash of pyproject's dependency tables only, so the
check is offline and instant: editing anything else in pyproject.toml keeps the lock valid.

    python3.11 scripts/lock.py write --uv UV [--upgrade]  # make lock [UPGRADE=1]
    python3.11 scripts/lock.py check           # exit 1 naming the file when stale
    python3.11 scripts/lock.py sync-file OUT [--wheel PATH]...   # what setup syncs
    python3.11 scripts/lock.py entries NAME... # lock entries (with hashes) of packages
    python3.11 scripts/lock.py source-builds   # `name==version` per source build
    python3.11 scripts/lock.py pin NAME        # `name==version` of one package
    python3.11 scripts/lock.py section NAME    # one section's lines (constraints for build venvs)
    python3.11 scripts/lock.py setting KEY     # a [tool.gpicture.lock] setting (find-links, ...)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK_NAME = "requirements.lock"
TORCH_WHEELS = "/opt/wheels"  # where this machine kind keeps the CPU torch wheel
SECTIONS = ("resolved", "no-deps", "source-builds")
_PIN = re.compile(r"^([a-z0-9][a-z0-9._-]*)==([^\s\\;]+)")
_HASH_LINE = re.compile(r"^# inputs-sha256: ([0-9a-f]{64})$", re.MULTILINE)


class LockError(ValueError):
    """The lock or pyproject.toml is missing, unreadable or out of date (message names the file)."""


def normalize(name: str) -> str:
    """PEP 503 name: lowercase with runs of -_. as one '-' (how the lock spells names)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject(root: Path) -> dict:
    path = root / "pyproject.toml"
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LockError(f"{path}: cannot read it: {exc}") from exc


def lock_inputs(root: Path) -> dict:
    """pyproject's tables that decide the lock: requires-python, dependencies, extras, tool.gpicture.lock."""
    data = _pyproject(root)
    project = data.get("project", {})
    settings = data.get("tool", {}).get("gpicture", {}).get("lock")
    if settings is None:
        raise LockError(f"{root / 'pyproject.toml'}: no [tool.gpicture.lock] table")
    return {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "tool.gpicture.lock": settings,
    }


def inputs_sha256(root: Path) -> str:
    """SHA-256 (hex) of lock_inputs() as canonical JSON: what the lock header records."""
    blob = json.dumps(lock_inputs(root), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def read_lock(root: Path) -> str:
    path = root / LOCK_NAME
    try:
        return path.read_text()
    except OSError as exc:
        raise LockError(f"{path}: cannot read the lock ({exc.strerror}): run `make lock`") from exc


def check(root: Path) -> None:
    """Raise LockError naming requirements.lock when it was not written from pyproject's current dependencies."""
    text = read_lock(root)
    found = _HASH_LINE.search(text)
    if not found:
        raise LockError(f"{root / LOCK_NAME}: no `# inputs-sha256:` header line: run `make lock`")
    want = inputs_sha256(root)
    if found.group(1) != want:
        raise LockError(
            f"{root / LOCK_NAME}: out of date with pyproject.toml's dependencies "
            f"(inputs-sha256 {found.group(1)[:12]} in the lock, {want[:12]} now): run `make lock`"
        )
    missing = [s for s in SECTIONS if f"# === {s}" not in text]
    if missing:
        raise LockError(f"{root / LOCK_NAME}: section(s) {', '.join(missing)} missing: run `make lock`")


def sections(text: str) -> dict[str, list[str]]:
    """The lock's lines by section name (lines before the first section are left out)."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^# === ([a-z-]+)", line)
        if m:
            current = m.group(1)
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return out


def entries(lines: list[str]) -> dict[str, list[str]]:
    """Package name -> its lines (the `name==version` pin and its `--hash` lines, without the `\\`)."""
    out: dict[str, list[str]] = {}
    name = None
    for line in lines:
        m = _PIN.match(line)
        if m:
            name = m.group(1)
            out[name] = [line.rstrip(" \\")]
        elif name is not None and line.lstrip().startswith("--hash"):
            out[name].append(line.rstrip(" \\"))
        else:
            name = None
    return out


def pins(text: str) -> dict[str, str]:
    """Every `name==version` of the lock (all sections)."""
    return {m.group(1): m.group(2) for m in map(_PIN.match, text.splitlines()) if m}


def _compile(uv: str, root: Path, settings: dict, args: list[str], cwd: Path) -> str:
    """One `uv pip compile --generate-hashes` run in `cwd` for the lock's target; its output file (last arg)."""
    cmd = [
        uv, "pip", "compile", "--quiet", "--no-header", "--generate-hashes", "--no-config",
        "--python-version", settings.get("python", "3.11"),
        "--python-platform", settings.get("platform", "x86_64-manylinux_2_28"),
        "--find-links", settings.get("find-links", TORCH_WHEELS), *args,
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LockError(f"{root / 'pyproject.toml'}: uv could not lock it:\n{done.stderr.strip()}")
    return (cwd / args[-1]).read_text().rstrip() + "\n"


def write(root: Path, uv: str, upgrade: bool = False) -> Path:
    """Compile the three sections with uv and write requirements.lock atomically."""
    settings = lock_inputs(root)["tool.gpicture.lock"]
    extras = [a for extra in _pyproject(root).get("project", {}).get("optional-dependencies", {}) for a in ("--extra", extra)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "requires.in").write_text("".join(f"{r}\n" for r in settings.get("requires", [])))
        (work / "no-deps.in").write_text("".join(f"{r}\n" for r in settings.get("no-deps", [])))
        builds = settings.get("source-builds", [])
        (work / "source-builds.in").write_text("".join(f"{r}\n" for r in builds))
        # uv must not build these sdists to read their metadata (their setup.py imports torch).
        meta = "".join(
            f'[[dependency-metadata]]\nname = "{normalize(n)}"\nversion = "{v}"\nrequires-dist = []\n'
            for n, v in (b.split("==", 1) for b in builds)
        )
        (work / "metadata.toml").write_text(meta)
        # The current pins are uv's preferences (`-o` of an existing file): a new dependency
        # moves only what it must; `upgrade` takes the newest releases the ranges allow.
        old = {} if upgrade or not (root / LOCK_NAME).exists() else sections(read_lock(root))
        for name in SECTIONS:
            (work / f"{name}.txt").write_text("\n".join(old.get(name, [])) + "\n")
        more = ["--upgrade"] if upgrade else []
        resolved = _compile(uv, root, settings, [str(root / "pyproject.toml"), *extras, "requires.in", *more, "-o", "resolved.txt"], work)
        no_deps = _compile(uv, root, settings, ["--no-deps", "no-deps.in", *more, "-o", "no-deps.txt"], work)
        source = _compile(uv, root, settings, ["--no-deps", "source-builds.in", "--config-file", "metadata.toml", *more, "-o", "source-builds.txt"], work)
    resolved = resolved.replace(str(root / "pyproject.toml"), "pyproject.toml")
    header = (
        "# requirements.lock: every package of gpicture's .venv, pinned with hashes. Written by\n"
        "# `make lock` (scripts/lock.py, uv pip compile) from pyproject.toml; do not edit by hand.\n"
        f"# inputs-sha256: {inputs_sha256(root)}\n"
        f"# Target: CPython {settings.get('python', '3.11')} on {settings.get('platform', 'x86_64-manylinux_2_28')}; "
        f"torch is the CPU wheel of {settings.get('find-links', TORCH_WHEELS)}.\n"
        "# scripts/setup.sh installs exactly this (uv pip sync, hashes checked), plus gpicture itself.\n"
    )
    body = (
        "# === resolved: [project] dependencies, extras and [tool.gpicture.lock] requires\n" + resolved
        + "# === no-deps: [tool.gpicture.lock] no-deps, installed without their declared dependencies\n" + no_deps
        + "# === source-builds: sdists that scripts/setup.sh builds once into the wheel cache\n" + source
    )  # fmt: skip
    path = root / LOCK_NAME
    tmp_path = path.with_name(f".{LOCK_NAME}.tmp")
    tmp_path.write_text(header + body)
    tmp_path.replace(path)
    return path


def sync_file(root: Path, out: Path, wheels: list[str]) -> None:
    """Write the requirements that setup syncs: the lock less its source builds, their built wheels, gpicture."""
    parts = sections(read_lock(root))
    lines = [*parts.get("resolved", []), *parts.get("no-deps", []), *wheels, f"-e {root}"]
    out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="project folder (default: this checkout)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("write")
    p.add_argument("--uv", required=True)
    p.add_argument("--upgrade", action="store_true", help="newest releases, not the current pins")
    sub.add_parser("check")
    p = sub.add_parser("sync-file")
    p.add_argument("out", type=Path)
    p.add_argument("--wheel", action="append", default=[])
    sub.add_parser("entries").add_argument("names", nargs="+")
    sub.add_parser("source-builds")
    sub.add_parser("pin").add_argument("name")
    sub.add_parser("section").add_argument("name", choices=SECTIONS)
    sub.add_parser("setting").add_argument("key")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        if args.cmd == "write":
            print(f"wrote {write(root, args.uv, args.upgrade)}")
        elif args.cmd == "check":
            check(root)
        elif args.cmd == "sync-file":
            sync_file(root, args.out, args.wheel)
        elif args.cmd == "entries":
            found = {}
            for lines in sections(read_lock(root)).values():
                found.update(entries(lines))
            missing = [n for n in args.names if normalize(n) not in found]
            if missing:
                raise LockError(f"{root / LOCK_NAME}: no pin for {', '.join(missing)}: run `make lock`")
            print("\n".join(" \\\n".join(found[normalize(n)]) for n in args.names))
        elif args.cmd == "pin":
            version = pins(read_lock(root)).get(normalize(args.name))
            if version is None:
                raise LockError(f"{root / LOCK_NAME}: no pin for {args.name}: run `make lock`")
            print(f"{normalize(args.name)}=={version}")
        elif args.cmd == "section":
            print("\n".join(sections(read_lock(root)).get(args.name, [])))
        elif args.cmd == "setting":
            defaults = {"python": "3.11", "platform": "x86_64-manylinux_2_28", "find-links": TORCH_WHEELS}
            print(lock_inputs(root)["tool.gpicture.lock"].get(args.key, defaults.get(args.key, "")))
        elif args.cmd == "source-builds":
            print("\n".join(f"{n}=={v}" for n, v in pins("\n".join(sections(read_lock(root)).get("source-builds", []))).items()))
    except LockError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
