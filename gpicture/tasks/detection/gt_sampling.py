"""Ground-truth sampling ("GT-paste", the database sampling of SECOND): a training-time augmentation
for detection that pastes annotated objects, with their points, from other frames into a frame.

Sparse classes (buses, trailers, bicycles) appear in few frames; pasting their objects into more
frames shows the detector many more positives per epoch. The database holds every annotated object
of the *labelled* frames (a fine-tuning run on a label fraction must not see other frames' objects)
with at least ``min_points`` points: its box, velocity, class and the points inside its box with
their feature columns. For a training frame, :func:`paste` draws objects per class so that the frame
ends up with ``sample_groups[class]`` objects of that class (none if it already has as many), rejects
those whose bird's-eye-view footprint overlaps a box of the frame or an object accepted before it,
removes the frame's points inside the accepted boxes (whatever was there would be hidden by the
object) and appends the objects' points, boxes, classes and velocities. Objects keep the position
they were recorded at, as in SECOND, so their points keep a plausible range, density and
self-occlusion. Paste runs before the global augmentation, which then moves pasted objects with the
scene.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gpicture.data.store import VoxelStore
from gpicture.ops.points_in_boxes import points_in_boxes_mask, points_in_boxes_pairs
from gpicture.ops.rotated_iou import rotated_iou

__all__ = ["GTDatabase", "GTSamplingConfig", "paste", "sample_objects"]

# Pairs per rotated-IoU call: the native op runs calls this small on the calling thread. A parallel
# region costs more than these few pairs, and much more on a busy machine (DataLoader workers).
_SERIAL_PAIRS = 2048


@dataclass(frozen=True)
class GTSamplingConfig:
    """What to paste. ``sample_groups`` maps a detection class name to the number of objects of
    that class a training frame should end up with (SECOND's semantics: ``max(0, target -
    existing)`` are drawn, fewer survive when they collide). Database objects need at least
    ``min_points`` points inside their box."""

    sample_groups: dict[str, int]
    min_points: int = 5

    def __post_init__(self) -> None:
        for name, n in self.sample_groups.items():
            if int(n) != n or n < 0:
                raise ValueError(f"gt sampling: target count of {name!r} must be a non-negative integer, got {n!r}")
        if self.min_points < 1:
            raise ValueError(f"gt sampling: min_points must be >= 1, got {self.min_points}")

    @classmethod
    def from_params(cls, sec: Mapping | None) -> GTSamplingConfig | None:
        """From a params section ``{sample_groups: {class: n}, min_points: k}``; None (off) when the
        section is missing or has no positive target."""
        if not sec or not any(int(n) > 0 for n in (sec.get("sample_groups") or {}).values()):
            return None
        groups = {str(k): int(v) for k, v in sec["sample_groups"].items()}
        return cls(groups, int(sec.get("min_points", 5)))


@dataclass
class GTDatabase:
    """Annotated objects and their points, flat: object ``i`` owns rows
    ``point_ptr[i]:point_ptr[i + 1]`` of ``points`` and ``features`` (CSR, one array each rather
    than one per object: compact, and cheap to pickle into DataLoader workers).

    ``labels`` index ``class_names``; ``frame`` is the store frame an object came from; points are
    in that frame's coordinates, where the box is.
    """

    class_names: tuple[str, ...]
    feature_names: tuple[str, ...]
    boxes: np.ndarray  # (K, 7) float32 x, y, z, l, w, h, yaw
    velocity: np.ndarray  # (K, 2) float32 (NaN in the source -> 0)
    labels: np.ndarray  # (K,) int64 index into class_names
    frame: np.ndarray  # (K,) int64 store frame index
    point_ptr: np.ndarray  # (K + 1,) int64
    points: np.ndarray  # (P, 3) float32
    features: np.ndarray  # (P, C) float32, columns in feature_names order
    _by_class: list[np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        k = len(self.boxes)
        if not (len(self.velocity) == len(self.labels) == len(self.frame) == k and len(self.point_ptr) == k + 1):
            raise ValueError("GTDatabase: per-object arrays disagree in length")
        if not (len(self.points) == len(self.features) == int(self.point_ptr[-1])):
            raise ValueError("GTDatabase: point arrays disagree with point_ptr")
        if self.features.shape[1] != len(self.feature_names):
            raise ValueError("GTDatabase: feature columns disagree with feature_names")
        # Object indices of each class, for sampling.
        self._by_class = [np.flatnonzero(self.labels == c) for c in range(len(self.class_names))]

    def __len__(self) -> int:
        return len(self.boxes)

    def counts_per_class(self) -> dict[str, int]:
        """Number of objects of each class (every class of ``class_names``, zeros included)."""
        return {name: len(idx) for name, idx in zip(self.class_names, self._by_class, strict=True)}

    def class_index(self, name: str) -> int:
        try:
            return self.class_names.index(name)
        except ValueError:
            raise ValueError(f"gt sampling: unknown class {name!r} (classes: {list(self.class_names)})") from None

    def objects_of_class(self, c: int) -> np.ndarray:
        """Indices of the objects of class index ``c``."""
        return self._by_class[c]

    def num_points(self) -> np.ndarray:
        """(K,) points per object."""
        return np.diff(self.point_ptr)

    def point_rows(self, objects: np.ndarray) -> np.ndarray:
        """Rows of ``points``/``features`` owned by ``objects`` (in that order), one gather index."""
        objects = np.asarray(objects, np.int64)
        start, n = self.point_ptr[objects], self.point_ptr[objects + 1] - self.point_ptr[objects]
        return np.repeat(start - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))

    @classmethod
    def build(
        cls,
        store_path: str | Path,
        frames: Iterable[int],
        class_names: Iterable[str],
        class_map: Mapping[str, str],
        feature_names: Iterable[str],
        *,
        min_points: int = 1,
        classes: Collection[str] | None = None,
    ) -> GTDatabase:
        """The database of the objects of ``frames`` (store frame indices) of a store.

        An object is kept when its raw name maps (``class_map``) to one of ``class_names`` (and
        to one of ``classes``, when given: classes never sampled need no memory) and at least
        ``min_points`` of the frame's points lie in its box. Its points are those in the box,
        with the frame's ``feature_names`` columns as float32 (the detection dataset's features).
        """
        class_names, feature_names = tuple(class_names), tuple(feature_names)
        index = {n: j for j, n in enumerate(class_names) if classes is None or n in classes}
        store = VoxelStore.open(store_path)
        parts: dict[str, list[np.ndarray]] = {
            k: [] for k in ("boxes", "velocity", "labels", "frame", "n", "pts", "feat")
        }
        for k in frames:
            k = int(k)
            if not 0 <= k < len(store):
                raise IndexError(f"{store_path}: frame index {k} out of range for {len(store)} frames")
            names = store.frame_boxes(k)[1]
            det = np.array([index.get(class_map.get(n, ""), -1) for n in names], dtype=np.int64)
            if not (det >= 0).any():
                continue  # no wanted object: skip reading the points
            fr = store[k]
            sel = np.flatnonzero(det >= 0)
            boxes_k = fr.boxes[sel]
            pi, bi = points_in_boxes_pairs(fr.points, boxes_k)
            n_in = np.bincount(bi, minlength=len(sel))
            ok = n_in >= min_points
            if not ok.any():
                continue
            order = np.argsort(bi, kind="stable")  # by box, points in frame order within a box
            pi, bi = pi[order], bi[order]
            pi = pi[ok[bi]]
            parts["boxes"].append(boxes_k[ok].astype(np.float32))
            parts["velocity"].append(np.nan_to_num(fr.box_velocity[sel[ok]]).astype(np.float32))
            parts["labels"].append(det[sel[ok]])
            parts["frame"].append(np.full(int(ok.sum()), k, np.int64))
            parts["n"].append(n_in[ok])
            parts["pts"].append(fr.points[pi].astype(np.float32))
            parts["feat"].append(
                np.stack([fr.features[n][pi] for n in feature_names], 1).astype(np.float32)
                if feature_names
                else np.zeros((len(pi), 0), np.float32)
            )

        def cat(name: str, empty: np.ndarray) -> np.ndarray:
            return np.concatenate(parts[name]) if parts[name] else empty

        n = cat("n", np.zeros(0, np.int64))
        ptr = np.zeros(len(n) + 1, np.int64)
        np.cumsum(n, out=ptr[1:])
        return cls(
            class_names,
            feature_names,
            boxes=cat("boxes", np.zeros((0, 7), np.float32)),
            velocity=cat("velocity", np.zeros((0, 2), np.float32)),
            labels=cat("labels", np.zeros(0, np.int64)),
            frame=cat("frame", np.zeros(0, np.int64)),
            point_ptr=ptr,
            points=cat("pts", np.zeros((0, 3), np.float32)),
            features=cat("feat", np.zeros((0, len(feature_names)), np.float32)),
        )


def _bev_aabb(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) lower and upper corners of the boxes' axis-aligned BEV footprints."""
    c, s = np.abs(np.cos(boxes[:, 6])), np.abs(np.sin(boxes[:, 6]))
    ext = np.stack([boxes[:, 3] * c + boxes[:, 4] * s, boxes[:, 3] * s + boxes[:, 4] * c], 1) / 2
    return boxes[:, :2] - ext, boxes[:, :2] + ext


def _overlaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) bool: whether the boxes' BEV footprints overlap (rotated IoU > 0).

    Footprints can only overlap where their axis-aligned bounds do (a cheap vectorized test, with
    a margin against rounding); the rotated IoU runs on the rows and columns of those pairs only.
    """
    out = np.zeros((len(a), len(b)), bool)
    if len(a) == 0 or len(b) == 0:
        return out
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    (alo, ahi), (blo, bhi) = _bev_aabb(a), _bev_aabb(b)
    near = ((alo[:, None] <= bhi[None] + 1e-6) & (blo[None] <= ahi[:, None] + 1e-6)).all(-1)
    rows, cols = np.flatnonzero(near.any(1)), np.flatnonzero(near.any(0))
    bc = torch.from_numpy(b[cols])
    step = max(1, _SERIAL_PAIRS // max(len(cols), 1))
    for r in np.array_split(rows, range(step, len(rows), step)):  # a few calls
        iou = rotated_iou(torch.from_numpy(a[r]), bc).numpy()
        out[np.ix_(r, cols)] = (iou > 0) & near[np.ix_(r, cols)]
    return out


def sample_objects(
    boxes: np.ndarray, labels: np.ndarray, db: GTDatabase, cfg: GTSamplingConfig, rng: np.random.Generator
) -> np.ndarray:
    """Database objects to paste into a frame with ``boxes`` (M, 7) of classes ``labels`` (M,).

    For each class of ``cfg.sample_groups`` (in its order), ``max(0, target - existing)`` objects
    are drawn without replacement (all of them if the class has fewer). Candidates are then
    visited in draw order and accepted unless their BEV footprint overlaps a frame box or an
    already accepted candidate. Returns the accepted object indices (int64), in draw order.
    """
    labels = np.asarray(labels)
    drawn = []
    for name, target in cfg.sample_groups.items():
        c = db.class_index(name)
        pool = db.objects_of_class(c)
        need = min(int(target) - int((labels == c).sum()), len(pool))
        if need > 0:
            drawn.append(rng.choice(pool, size=need, replace=False))
    if not drawn:
        return np.zeros(0, np.int64)
    cand = np.concatenate(drawn).astype(np.int64)
    cb = db.boxes[cand]
    blocked = _overlaps(cb, np.asarray(boxes).reshape(-1, 7)).any(1)
    among = _overlaps(cb, cb)
    accepted = np.zeros(len(cand), bool)
    for i in range(len(cand)):  # greedy; tens of candidates
        if not blocked[i]:
            accepted[i] = True
            blocked |= among[i]
    return cand[accepted]


def paste(
    points: np.ndarray,
    features: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    velocity: np.ndarray,
    db: GTDatabase,
    cfg: GTSamplingConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Paste database objects into a frame (see :func:`sample_objects` for which).

    Args:
        points: (N, 3) float32 frame points; features: (N, C) their feature columns, in
            ``db.feature_names`` order; boxes (M, 7), labels (M,) int64 (``db.class_names``
            indices), velocity (M, 2): the frame's annotations.

    Returns:
        ``(points, features, boxes, labels, velocity)``: the frame's points outside the pasted
        boxes followed by the pasted objects' points (features alongside, row for row), and the
        frame's annotations followed by the pasted ones. Deterministic given ``rng``'s state;
        the inputs are returned unchanged when nothing is pasted.
    """
    if features.shape != (len(points), len(db.feature_names)):
        raise ValueError(
            f"gt sampling: features of shape {features.shape}, expected "
            f"({len(points)}, {len(db.feature_names)}) for {list(db.feature_names)}"
        )
    sel = sample_objects(boxes, labels, db, cfg, rng)
    if len(sel) == 0:
        return points, features, boxes, labels, velocity
    new_boxes = db.boxes[sel]
    keep = ~points_in_boxes_mask(points, new_boxes)
    rows = db.point_rows(sel)
    n_keep = int(keep.sum())

    def stack_rows(scene: np.ndarray, objects: np.ndarray) -> np.ndarray:
        out = np.empty((n_keep + len(rows), scene.shape[1]), scene.dtype)
        np.compress(keep, scene, axis=0, out=out[:n_keep])  # no temporary copy
        out[n_keep:] = objects[rows]
        return out

    return (
        stack_rows(points, db.points),
        stack_rows(features, db.features),
        np.concatenate([boxes, new_boxes.astype(boxes.dtype, copy=False)]),
        np.concatenate([labels, db.labels[sel].astype(labels.dtype, copy=False)]),
        np.concatenate([velocity, db.velocity[sel].astype(velocity.dtype, copy=False)]),
    )
