"""Finite-value guards where data enters: what the readers do with NaN / inf, and the store's
read-side check that no non-finite value reaches training.

A NaN intensity that passes ``convert`` reaches the teacher, the loss and the metrics without a
word; the readers therefore check every value they read against :class:`NonFinitePolicy`
(params ``convert.nonfinite``), and :func:`check_finite` refuses a frame of a tampered or old
store that holds one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

DROP, ERROR = "drop", "error"


@dataclass(frozen=True)
class NonFinitePolicy:
    """What a reader does with non-finite values (NaN, +-inf) in what it reads
    (params ``convert.nonfinite``).

    - ``points``: a point with any non-finite coordinate *or feature* (intensity, ring,
      elongation, nlz, ...). ``drop`` removes it, counted in ``RawFrame.extra['dropped_nonfinite']``
      (logged by convert and kept in the store attrs ``dropped_nonfinite_points``); ``error``
      stops with a ValueError naming the file and the count. A sensor glitch loses a few
      returns, so ``drop`` is the default. The Waymo lasers' extrinsics and TOP pixel poses
      place single points: a non-finite one makes non-finite points, handled here.
    - ``labels``: lidarseg / segmentation classes outside the dataset's table, occupancy
      rows with non-finite or out-of-table values.
    - ``boxes``: a box whose centre, size or yaw is non-finite, or whose velocity is infinite
      (NaN velocity is the schema's "unknown": nuScenes' single-annotation instances, Waymo
      labels without metadata).
    - ``poses``: the frame's placement (nuScenes ``ego_pose`` / ``calibrated_sensor`` records of
      the keyframe and its sweeps, Waymo ``Frame.pose``).

    ``labels``, ``boxes`` and ``poses`` accept only ``error``: dropping a box or a label would
    silently change the annotation, and no point of a frame can be placed without its pose.
    """

    points: str = DROP
    labels: str = ERROR
    boxes: str = ERROR
    poses: str = ERROR

    def validate(self) -> None:
        """Raise ValueError naming the key of an unknown or unsupported choice."""
        for f in fields(self):
            value, allowed = getattr(self, f.name), (DROP, ERROR) if f.name == "points" else (ERROR,)
            if value not in allowed:
                raise ValueError(f"convert.nonfinite.{f.name}: {value!r} is not one of: {', '.join(allowed)}")

    @classmethod
    def from_params(cls, section: dict[str, Any] | None) -> NonFinitePolicy:
        """The policy of a params ``convert.nonfinite`` mapping (missing keys: the defaults)."""
        section = dict(section or {})
        unknown = sorted(set(section) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"convert.nonfinite: unknown keys {unknown} (points, labels, boxes, poses)")
        policy = cls(**{k: str(v) for k, v in section.items()})
        policy.validate()
        return policy


DEFAULT_POLICY = NonFinitePolicy()  # frozen: safe as a shared default argument


def nonfinite_points_error(source: str, count: int, total: int) -> ValueError:
    """The ``points: error`` refusal: ``count`` of ``total`` points of ``source`` hold NaN / inf."""
    return ValueError(f"{source}: {count} of {total} points have a non-finite coordinate or feature "
                      "(convert.nonfinite.points: error; `drop` drops and counts them)")


def bad_box_rows(boxes: np.ndarray, velocity: np.ndarray) -> np.ndarray:
    """(M,) bool: boxes (M, 7) with a non-finite centre, size or yaw, or a velocity (M, 2+) with
    an infinite component (NaN velocity means unknown and is kept)."""
    return ~np.isfinite(boxes).all(axis=1) | np.isinf(velocity).any(axis=1)


def check_finite(where: str, arrays: dict[str, Any], error: type[ValueError] = ValueError, hint: str = "") -> None:
    """Raise ``error``(``where``: ... ``hint``) if a float array of ``arrays`` (name -> array or a
    dict of features; anything else is skipped) holds NaN / inf; ``box_velocity`` may hold NaN
    (unknown), not inf.

    One ``np.isfinite`` pass per array: cheap next to reading and decompressing the rows."""
    for name, value in arrays.items():
        if isinstance(value, dict):
            check_finite(where, {f"{name} {k!r}": v for k, v in value.items()}, error, hint)
            continue
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or np.isfinite(value).all():
            continue
        bad = np.isinf(value) if name == "box_velocity" else ~np.isfinite(value)
        if bad.any():
            raise error(f"{where}: {int(np.count_nonzero(bad))} non-finite values in {name}{hint}")
