"""One frame as a dataset reader produces it, before it goes into a voxel store.

Frames and units: points, boxes and velocities are in the *points' frame*: the
keyframe LiDAR frame for nuScenes, the vehicle frame for Waymo; metres, radians,
metres per second. ``pose`` maps that frame into the dataset's global frame.

``RawFrame`` has one attribute per field of :data:`gpicture.data.schema.FIELDS` that
the readers fill (all but the voxelization), and ``extra`` (reader notes such as
``dropped_nonfinite``). A frame read without labels (``labels=False``) has None in every
label field (the schema's ``label`` flag). What the readers do with NaN / inf values is
:class:`gpicture.data.finite.NonFinitePolicy`.
"""

from __future__ import annotations

from dataclasses import field

from gpicture.data.schema import BOX, FIELDS, POINT, frame_type, rows


class EmptyFrameError(ValueError):
    """A source frame with no LiDAR point at all (a stripped or camera-only record, an empty
    keyframe file). ``gpicture convert --skip-empty-frames`` skips such frames and counts them;
    without it the conversion stops with this error, naming the file and the frame."""


def _validate(self: RawFrame, source: str) -> None:
    """Raise ValueError naming `source` if the frame is malformed."""
    n = len(self.points)
    if self.points.ndim != 2 or self.points.shape[1] != 3:
        raise ValueError(f"{source}: points have shape {self.points.shape}, expected (N, 3)")
    for name, arr in self.features.items():
        if len(arr) != n:
            raise ValueError(f"{source}: feature {name!r} has {len(arr)} values for {n} points")
    m = rows(self, BOX)  # 0 in an unlabelled frame (every label field None)
    for f in _READ:
        value = getattr(self, f.name)
        if value is None:
            if not (f.optional or f.label):
                raise ValueError(f"{source}: no {f.name}")
            continue
        if f.level is POINT and f.name not in ("points", "features") and len(value) != n:
            raise ValueError(f"{source}: {f.name} has {len(value)} rows for {n} points")
        if f.level is BOX and len(value) != m:
            raise ValueError(f"{source}: {f.name} has {len(value)} rows for {m} boxes")


_READ = tuple(f for f in FIELDS if not f.derived)
RawFrame = frame_type(
    "RawFrame",
    "A frame read from a raw dataset (a nuScenes keyframe with its sweeps, a Waymo frame).",
    _READ,
    after=[("extra", "dict[str, object]", field(default_factory=dict))],
    namespace={"validate": _validate},
    module=__name__,
)
