"""Training run folders (``pretrain`` / ``finetune --out``): claimed as every output is, ours from the start.

A run folder is written in place, not built aside and moved: a checkpoint every epoch, so an
interrupted run resumes. So :func:`claim_run` marks it (``.gpicture-output``, kind
``pretrain-run`` or ``<task>-finetune-run``) when it claims it, before anything else is written
there: from its first epoch on, an interrupted run's folder says it is ours and of which kind.

What an ``--out`` may be (:func:`check_run_folder`):

- absent, or an empty folder: claimed and marked;
- a run folder of the same kind (its marker): resumed (``--force``: started afresh, the previous
  run's checkpoint, final model and logs removed first);
- an unmarked folder holding only what such a run writes, each file of it readable as ours (a
  training checkpoint, the kind's final model; DVC pulls the tracked files without the marker):
  taken as that run's, marked;
- anything else (foreign files, a folder of another kind, a file) is refused, ``--force`` or not,
  with a message naming it: nothing is deleted or overwritten that this project did not write.

A symlink is resolved first: the check, the lock and the writes are those of the folder it
points to. Under ``torchrun`` rank 0 claims (every rank runs the command).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpicture.atomic import MARK, OutputError, claim_output, mark_output, output_kind

log = logging.getLogger(__name__)
NEUTRAL = (".gitignore",)  # DVC writes one in every folder holding tracked outputs


@dataclass(frozen=True)
class RunKind:
    """What one kind of training run writes in its folder."""

    kind: str  # the marker's kind
    final: tuple[str, ...]  # written when the run finishes (never by an interrupted run)
    formats: dict[str, str] = field(default_factory=dict)  # checkpoint file -> its "format" entry
    others: tuple[str, ...] = ()  # written beside the run by other commands (evaluate's eval/ of a study run)

    @property
    def written(self) -> tuple[str, ...]:
        """Every name a run of this kind writes in its folder."""
        return (MARK, "checkpoint.pt", "dvclive", *self.final)


PRETRAIN_RUN = RunKind("pretrain-run", ("student.pt",), {"student.pt": "gpicture-student"})


def finetune_run(task: str) -> RunKind:
    """The run folder of a fine-tune of ``task`` (detection, segmentation, occupancy)."""
    return RunKind(f"{task}-finetune-run", ("model.pt", "init_report.json"), {"model.pt": f"gpicture-{task}"},
                   others=("eval",))


def _temporary(name: str) -> bool:
    return name.startswith(".") and ".tmp-" in name


def _is_ours(path: Path, run: RunKind) -> bool:
    """Whether the unmarked ``path`` (an entry of a run folder) reads as what ``run`` writes there."""
    name = path.name
    if name in ("dvclive", *run.others):
        return path.is_dir() and not path.is_symlink()
    if name == "init_report.json":
        try:
            return isinstance(json.loads(path.read_text()).get("init"), str)
        except (OSError, ValueError, AttributeError):
            return False
    if name == "checkpoint.pt" or name in run.formats:
        try:  # mmap: the tensors are not read, only the pickled record
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        except Exception:  # noqa: BLE001  (anything that is not a readable checkpoint)
            return False
        if not isinstance(state, dict):
            return False
        if name == "checkpoint.pt":
            return {"model", "optimizer", "epoch", "run_key", "config"} <= set(state)
        return state.get("format") == run.formats[name]
    return False


def check_run_folder(out: Path, run: RunKind) -> None:
    """OutputError naming ``out`` unless it is absent, empty, or a ``run`` folder (module docstring)."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"{out}: not a folder; --out takes a new folder or a {run.kind} folder gpicture wrote")
    found = output_kind(out)
    if found == run.kind:
        return
    if found is not None:
        raise OutputError(f"{out}: a {found} written by gpicture, not a {run.kind}; --force replaces only a "
                          f"{run.kind}: choose another --out")
    entries = sorted(p.name for p in out.iterdir() if p.name not in NEUTRAL and not _temporary(p.name))
    foreign = [n for n in entries if n not in (*run.written, *run.others) or not _is_ours(out / n, run)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 5 else "")
        raise OutputError(f"{out}: holds files gpicture did not write there ({shown}); --out takes a new or empty "
                          f"folder or a {run.kind} folder, and --force replaces only those: move them or choose "
                          "another --out")


def _clear(folder: Path, names: tuple[str, ...]) -> None:
    for name in names:
        p = folder / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def _remove_stale(folder: Path) -> None:
    """Remove the temporary files a killed run left inside its folder (``.<name>.tmp-*`` of the
    atomic writes; called while holding the claim, so no live writer owns them)."""
    for p in sorted(folder.glob(".*.tmp-*")):
        if p.is_file() or p.is_symlink():
            p.unlink(missing_ok=True)
            log.warning("removed %s, left by an interrupted run", p)


@contextmanager
def claim_run(out: Path, run: RunKind, force: bool = False) -> Iterator[Path]:
    """Hold the exclusive claim on the run folder ``out`` for the block and yield it, symlinks
    resolved: refused (OutputError) when it holds anything else than a ``run`` (module docstring);
    marked before anything else is written; with ``force`` the previous run's files are removed
    first (a fresh run). A folder this call created that holds only the marker when the block
    ends (the run failed before its first write) is removed again."""
    real = Path(os.path.realpath(out))
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 claims for all
        yield real
        return
    with claim_output(real, run.kind, exist_ok=True):  # one writer; stale siblings removed
        check_run_folder(real, run)
        created = not real.exists()
        try:
            real.mkdir(parents=True, exist_ok=True)
            _remove_stale(real)
            if force:
                _clear(real, ("checkpoint.pt", "dvclive", *run.final))
            mark_output(real, run.kind)
        except OSError as exc:
            raise OutputError(f"{exc.filename or real}: cannot be written ({exc.strerror or exc})") from None
        try:
            yield real
        finally:
            if created and [p.name for p in real.iterdir()] == [MARK]:
                shutil.rmtree(real, ignore_errors=True)
