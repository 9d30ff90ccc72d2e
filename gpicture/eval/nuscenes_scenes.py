"""Which scenes of a nuScenes evaluation split a dataset really holds.

A dataset on disk often holds only part of an official split: a few real scenes for tests,
a download of some blobs, a ``v1.0-trainval`` folder cut down to one log. The devkit's
``DetectionEval`` already scores the samples of the split's scenes that are present; its
``LidarSegEval`` (``get_samples_in_eval_set``) instead stops with a bare ``KeyError`` at the
first scene of the split list that the tables lack. :func:`split_scenes` says which scenes
an evaluation covers (the metrics record them), and :func:`lidarseg_on_present_scenes` lets
``LidarSegEval`` evaluate exactly those, still with the devkit's own loading, class mapping
and confusion matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock

# Which dataset version a predefined split belongs to (the devkit's load_gt checks the same).
_VERSION_OF = {"train": "trainval", "val": "trainval", "train_detect": "trainval", "train_track": "trainval",
               "mini_train": "mini", "mini_val": "mini", "test": "test"}


@dataclass(frozen=True)
class SplitScenes:
    """The scenes of an evaluation split: those the dataset holds (split order) and how many it lacks."""

    eval_set: str
    present: tuple[str, ...]
    missing: int

    def describe(self) -> str:
        """One line for the log: what was evaluated."""
        text = f"{self.eval_set}: {len(self.present)} scene(s) present ({', '.join(self.present)})"
        return text + (f"; {self.missing} scene(s) of the split are not in this dataset and are not evaluated"
                       if self.missing else "")


def _scenes_of(nusc: Any, eval_set: str) -> list[str]:
    from nuscenes.utils.splits import (
        create_splits_scenes,
        get_scenes_of_custom_split,
        is_predefined_split,
    )

    if is_predefined_split(split_name=eval_set):
        want = _VERSION_OF.get(eval_set)
        if want is None:
            raise ValueError(f"eval set {eval_set!r} is not an evaluation split of any nuScenes version")
        if not nusc.version.endswith(want):
            raise ValueError(f"eval set {eval_set!r} does not belong to nuScenes version {nusc.version!r}")
        return list(create_splits_scenes()[eval_set])
    try:
        return list(get_scenes_of_custom_split(split_name=eval_set, nusc=nusc))
    except (FileNotFoundError, AssertionError, ValueError) as e:
        raise ValueError(f"unknown eval set {eval_set!r}: {e}") from None


def split_scenes(nusc: Any, eval_set: str) -> SplitScenes:
    """The scenes of ``eval_set`` (predefined or a custom ``splits.json`` split) that ``nusc`` holds.

    ValueError when the split does not belong to the dataset's version, or when the dataset
    holds none of its scenes (nothing to evaluate)."""
    names = _scenes_of(nusc, eval_set)
    held = {s["name"] for s in nusc.scene}
    present = tuple(n for n in names if n in held)
    if not present:
        raise ValueError(f"{nusc.dataroot}: the dataset holds none of the {len(names)} scenes of {eval_set!r}")
    return SplitScenes(eval_set, present, len(names) - len(present))


def sample_tokens(nusc: Any, scenes: SplitScenes) -> list[str]:
    """Keyframe sample tokens of the present scenes, scene by scene in time order."""
    by_name = {s["name"]: s for s in nusc.scene}
    tokens: list[str] = []
    for name in scenes.present:
        token = by_name[name]["first_sample_token"]
        while token:
            tokens.append(token)
            token = nusc.get("sample", token)["next"]
    return tokens


@contextmanager
def lidarseg_on_present_scenes(nusc: Any, scenes: SplitScenes) -> Iterator[None]:
    """Within the block, ``LidarSegEval`` evaluates the samples of the present scenes of the split.

    Only the devkit's choice of samples is replaced (its ``get_samples_in_eval_set``, for this
    ``nusc`` and eval set); anything else asked of it goes to the original function."""
    import nuscenes.eval.lidarseg.evaluate as devkit

    original = devkit.get_samples_in_eval_set
    tokens = sample_tokens(nusc, scenes)

    def present_samples(n: Any, eval_set: str) -> list[str]:
        return list(tokens) if n is nusc and eval_set == scenes.eval_set else original(n, eval_set)

    with mock.patch.object(devkit, "get_samples_in_eval_set", present_samples):
        yield
