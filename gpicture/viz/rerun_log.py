"""``gpicture show --rerun FILE.rrd``: the frames of a store as one Rerun recording, to rotate in 3D.

The pictures of :mod:`gpicture.viz.render` are flat; this writes the same content as a
recording that ``rerun FILE.rrd`` opens (rerun-sdk, imported only here and only when called).
Every frame is logged at its time on two timelines: ``timestamp`` (the frame's own timestamp)
and ``frame`` (its index in the store). Positions are in the points' frame (keyframe LiDAR frame
for nuScenes, vehicle frame for Waymo), metres, z up. Entities (:data:`ENTITIES`):

- ``world/points/intensity``: every point, coloured by intensity (0 to the frame's 99th
  percentile, as the ``bev`` view, on the bright part of plasma: the viewer's background is dark);
- ``world/points/label``: every point, with its evaluation class as class id (labelled stores);
  the dataset's palette and class names are the entity's annotation context;
- ``world/points/i2mask``: every point, with the I²Mask k-means cluster of its voxel as class id
  (``--teacher``; the mask of ``mask_seed`` / ``mask_epoch``, as the ``mask`` view);
  ``world/points/i2mask_visible``: the points of the voxels left unmasked, what the student sees;
- ``world/points/teacher_pca``: every point, coloured by its voxel's teacher feature projected to
  RGB by the frame's PCA (``--teacher``, as the ``teacher`` view);
- ``world/boxes/ground_truth``: the frame's boxes (labelled stores), labelled with their class;
  ``world/boxes/predicted``: predicted boxes scoring at least the threshold, labelled
  ``<class> <score>`` (detection ``--predictions``);
- ``world/occupancy/truth``: one solid box per occupied voxel, class id = occupancy label (the
  same ground truth as the ``occupancy`` view); ``world/occupancy/predicted`` with occupancy
  ``--predictions``;
- ``range/range``, ``range/intensity``, ``range/label``: the TOP lidar range image rebuilt from
  the points (Waymo stores, :mod:`gpicture.viz.range_view`), as depth, colour and segmentation
  images;
- ``frame``: a text document naming the frame.

Points without a voxel (outside the grid) or voxels without a teacher target get the class id
:data:`NO_CLASS` ("none"). An entity that a frame lacks (no occupancy truth, no predicted box
above the threshold) is logged empty for that frame, so the viewer never shows a previous
frame's data there. The recording carries a default layout: one 3D view per colouring (tabs),
each with the boxes, an occupancy view, and for Waymo the three range images.

The file is written under a temporary name beside ``FILE.rrd`` and renamed into place only when
complete; any failure (bad predictions for a frame, an interrupt) removes the temporary and
leaves an earlier ``FILE.rrd`` as it was.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import matplotlib as mpl
import numpy as np

from gpicture.atomic import OutputLock, move_into_place, remove_stale_temporaries
from gpicture.data.store import StoreFrame
from gpicture.viz import inputs
from gpicture.viz import palette as pal
from gpicture.viz.range_view import TOP_LASER, range_image
from gpicture.viz.render import ShowConfig, Sources, _has_occupancy, _occupancy_inputs
from gpicture.viz.views import INTENSITY_CMAP, pca_rgb

NO_CLASS = 255  # class id of "no label / no cluster / no teacher target"
NO_POINT = 254  # class id of a range-image pixel without a point
GT_RGB, PRED_RGB = (40, 220, 60), (255, 0, 255)  # boxes, on the viewer's dark background
POINT_RADIUS = 0.05  # m
ENTITIES = ("world/points/intensity", "world/points/label", "world/points/i2mask", "world/points/i2mask_visible",
            "world/points/teacher_pca", "world/boxes/ground_truth", "world/boxes/predicted",
            "world/occupancy/truth", "world/occupancy/predicted", "range/range", "range/intensity",
            "range/label", "frame")


class RerunMissingError(OSError):
    """rerun-sdk is not installed (``show --rerun`` is the only thing that needs it)."""


def import_rerun() -> ModuleType:
    """The ``rerun`` module, or RerunMissingError saying how to get it."""
    try:
        with warnings.catch_warnings():  # this project pins numpy < 2 (nuscenes-devkit); rerun works with it
            warnings.filterwarnings("ignore", message="numpy 1 detected", category=DeprecationWarning)
            import rerun
    except ImportError as exc:
        raise RerunMissingError(f"`gpicture show --rerun` needs rerun-sdk, which is not installed ({exc}); "
                                "install the project's environment with `make setup`") from None
    return rerun


@dataclass
class RecordingSummary:
    """What a recording holds: the entities logged and, per frame, the count of each."""

    path: Path
    entities: tuple[str, ...]  # the entities of :data:`ENTITIES` this store's recording has
    counts: dict[str, list[int]] = field(default_factory=dict)  # entity -> instances per frame (pixels for images)

    @property
    def frames(self) -> int:
        return len(next(iter(self.counts.values()), []))


def _u8(rgb: np.ndarray) -> np.ndarray:
    """RGB floats in [0, 1] (N, 3) -> uint8 (N, 3)."""
    return np.round(np.clip(np.asarray(rgb, np.float64), 0, 1) * 255).astype(np.uint8)


def _context(rr: ModuleType, names: Sequence[str], colors: np.ndarray, extra: dict[int, tuple[str, tuple]]):
    """An AnnotationContext: class id k -> (names[k], colors[k]), plus ``extra`` ids."""
    rgb8 = _u8(np.vstack([np.asarray(colors, np.float64).reshape(-1, 3),
                          np.asarray([c for _, c in extra.values()], np.float64).reshape(-1, 3)])).tolist()
    ids = [*range(len(names)), *extra]
    labels = [*map(str, names), *(n for n, _ in extra.values())]
    infos = [rr.AnnotationInfo(id=k, label=n, color=tuple(c))  # one entry per class, not per point
             for k, n, c in zip(ids, labels, rgb8, strict=True)]
    return rr.AnnotationContext(infos)


def intensity_rgb(intensity: np.ndarray) -> np.ndarray:
    """Intensities (N,) -> uint8 RGB (N, 3): 0 .. the 99th percentile onto plasma's upper 80 %
    (its darkest fifth would vanish on the viewer's black background)."""
    v = np.asarray(intensity, np.float64)
    hi = float(np.percentile(v, 99)) if len(v) else 1.0
    t = np.clip(v / (hi if hi > 0 else 1.0), 0, 1)
    return _u8(mpl.colormaps[INTENSITY_CMAP](0.2 + 0.8 * t)[:, :3])


def yaw_quaternions(yaw: np.ndarray) -> np.ndarray:
    """Yaw about +z (K,) rad -> (K, 4) float32 quaternions x, y, z, w (Rerun's order)."""
    h = np.asarray(yaw, np.float64) / 2
    return np.column_stack([np.zeros_like(h), np.zeros_like(h), np.sin(h), np.cos(h)]).astype(np.float32)


def boxes3d(rr: ModuleType, boxes: np.ndarray, labels: np.ndarray, rgb: tuple[int, int, int]):
    """Boxes3D of (K, 7) x, y, z, l, w, h, yaw boxes (centre, m, rad) with one label each."""
    b = np.asarray(boxes, np.float64).reshape(-1, 7)
    return rr.Boxes3D(centers=b[:, :3].astype(np.float32), half_sizes=(b[:, 3:6] / 2).astype(np.float32),
                      quaternions=yaw_quaternions(b[:, 6]), labels=np.asarray(labels).astype(str).tolist(),
                      colors=np.broadcast_to(np.asarray(rgb, np.uint8), (len(b), 3)))


def occupancy_boxes(rr: ModuleType, rows: np.ndarray, grid) -> object:
    """Solid Boxes3D, one per occupancy row (K, 4) z, y, x, label on ``grid``; class id = label."""
    r = np.asarray(rows, np.int64).reshape(-1, 4)
    lo, vs = np.asarray(grid.point_cloud_range[:3], np.float64), np.asarray(grid.voxel_size, np.float64)
    centres = lo + (r[:, [2, 1, 0]] + 0.5) * vs
    return rr.Boxes3D(centers=centres.astype(np.float32), half_sizes=np.broadcast_to(vs / 2, (len(r), 3)).astype(np.float32),
                      class_ids=r[:, 3].astype(np.uint16), fill_mode="solid")


def _voxel_ids(frame: StoreFrame, per_voxel: np.ndarray, none: int) -> np.ndarray:
    """Per-voxel values (V,) -> per point (N,) through ``point_voxel``; ``none`` for points off the grid."""
    pv = np.asarray(frame.point_voxel, np.int64)
    return np.where(pv >= 0, np.asarray(per_voxel)[np.maximum(pv, 0)], none) if len(per_voxel) else \
        np.full(len(pv), none)


class _Writer:
    """Logs the frames of one store into an open recording stream (the module docstring's entities)."""

    def __init__(self, rr: ModuleType, rec, src: Sources, cfg: ShowConfig) -> None:
        self.rr, self.rec, self.src, self.cfg = rr, rec, src, cfg
        self.palette = pal.semantic_palette(src.dataset, src.store.attrs)
        labelled = src.store.labelled
        has = {"world/points/intensity": True, "world/points/label": labelled,
               "world/points/i2mask": src.teacher is not None, "world/points/i2mask_visible": src.teacher is not None,
               "world/points/teacher_pca": src.teacher is not None, "world/boxes/ground_truth": labelled,
               "world/boxes/predicted": src.detection_predictions is not None,
               "world/occupancy/truth": labelled, "world/occupancy/predicted": src.occupancy_predictions is not None,
               "range/range": src.spec.has_range_images, "range/intensity": src.spec.has_range_images,
               "range/label": src.spec.has_range_images, "frame": True}
        self.entities = tuple(e for e in ENTITIES if has[e])
        self.counts: dict[str, list[int]] = {e: [] for e in self.entities}

    def log_static(self) -> None:
        rr, rec, p = self.rr, self.rec, self.palette
        rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
        classes = _context(rr, p.names, p.colors, {NO_CLASS: ("no label", pal.UNLABELLED_COLOR),
                                                   NO_POINT: ("no point", (0.0, 0.0, 0.0))})
        for e in ("world/points/label", "world/occupancy/truth", "world/occupancy/predicted", "range/label"):
            if e in self.counts:
                rec.log(e, classes, static=True)
        k = self.cfg.mask.n_clusters if self.cfg.mask is not None else len(pal.CLUSTER_COLORS)
        clusters = _context(rr, [f"cluster {i}" for i in range(k)], pal.cluster_colors(np.arange(k)),
                            {NO_CLASS: ("no teacher target / off the grid", pal.UNLABELLED_COLOR)})
        for e in ("world/points/i2mask", "world/points/i2mask_visible"):
            if e in self.counts:
                rec.log(e, clusters, static=True)

    def _log(self, entity: str, archetype, count: int) -> None:
        if entity in self.counts:
            self.rec.log(entity, archetype)
            self.counts[entity].append(count)

    def _points(self, entity: str, xyz: np.ndarray, **kw) -> None:
        self._log(entity, self.rr.Points3D(xyz, radii=POINT_RADIUS, **kw), len(xyz))

    def log_frame(self, index: int) -> None:
        """Log frame ``index`` of the store at its time (every entity of the recording, empty where it lacks one)."""
        rr, rec, src, cfg = self.rr, self.rec, self.src, self.cfg
        frame = src.store[index]
        rec.set_time("frame", sequence=int(index))
        rec.set_time("timestamp", timestamp=np.datetime64(int(frame.timestamp_us), "us"))
        xyz = np.asarray(frame.points, np.float32)
        self._points("world/points/intensity", xyz, colors=intensity_rgb(frame.features["intensity"]))
        if self.src.store.labelled:
            ids = (self.palette.lut[frame.seg_labels.astype(np.int64)] if frame.seg_labels is not None
                   else np.full(len(xyz), -1))
            self._points("world/points/label", xyz, class_ids=np.where(ids >= 0, ids, NO_CLASS).astype(np.uint16))
            self._log("world/boxes/ground_truth", boxes3d(rr, frame.boxes, frame.box_names, GT_RGB), len(frame.boxes))
        if src.teacher is not None:
            self._teacher(frame, xyz)
        if src.detection_predictions is not None:
            det = inputs.frame_detections(src.detection_predictions, src.store, index)
            keep = det.scores >= cfg.score_threshold
            labels = np.char.add(np.char.add(det.names[keep].astype(str), " "),
                                 np.char.mod("%.2f", det.scores[keep]))
            self._log("world/boxes/predicted", boxes3d(rr, det.boxes[keep], labels, PRED_RGB), int(keep.sum()))
        if "world/occupancy/truth" in self.counts or "world/occupancy/predicted" in self.counts:
            self._occupancy(frame)
        if src.spec.has_range_images:
            self._range(frame)
        n_boxes = len(frame.boxes) if frame.boxes is not None else 0
        self._log("frame", rr.TextDocument(f"**{src.dataset} · {src.store.path.name}** frame {index}: "
                                           f"`{frame.frame_id}`, scene `{frame.scene}`, {len(xyz)} points, "
                                           f"{len(frame.voxel_coords)} voxels, {n_boxes} boxes",
                                           media_type="text/markdown"), 1)

    def _teacher(self, frame: StoreFrame, xyz: np.ndarray) -> None:
        from gpicture.training.pretrain import MaskConfig  # lazy: torch only when I²Mask is recorded

        feats, valid = self.src.teacher_store.frame(frame.index)
        m = inputs.frame_mask(feats, valid, frame.index, self.cfg.mask or MaskConfig(), self.cfg.mask_seed,
                              self.cfg.mask_epoch)
        cluster = _voxel_ids(frame, np.where(m.cluster >= 0, m.cluster, NO_CLASS), NO_CLASS).astype(np.uint16)
        self._points("world/points/i2mask", xyz, class_ids=cluster)
        seen = _voxel_ids(frame, ~m.mask, False).astype(bool)
        self._points("world/points/i2mask_visible", xyz[seen], class_ids=cluster[seen])
        rgb, _ = pca_rgb(feats, valid)
        pv = np.asarray(frame.point_voxel, np.int64)
        prgb = np.broadcast_to(np.asarray(pal.UNLABELLED_COLOR), (len(pv), 3)).copy()
        prgb[pv >= 0] = rgb[pv[pv >= 0]]
        self._points("world/points/teacher_pca", xyz, colors=_u8(prgb))

    def _occupancy(self, frame: StoreFrame) -> None:
        rr, empty = self.rr, self.rr.Boxes3D(half_sizes=np.zeros((0, 3), np.float32))
        truth, grid, pred = None, None, None
        if _has_occupancy(frame, self.src.spec) or self.src.occupancy_predictions is not None:
            truth, grid, pred, _ = _occupancy_inputs(self.src, frame, self.cfg)
        if truth is None:
            self._log("world/occupancy/truth", empty, 0)
        else:
            self._log("world/occupancy/truth", occupancy_boxes(rr, truth, grid), len(truth))
        if pred is None:
            self._log("world/occupancy/predicted", empty, 0)
        else:
            self._log("world/occupancy/predicted", occupancy_boxes(rr, pred, grid), len(pred))

    def _range(self, frame: StoreFrame) -> None:
        rr = self.rr
        laser = frame.features.get("laser")
        if laser is None or not (laser == TOP_LASER).any():
            for e in ("range/range", "range/intensity", "range/label"):
                self._log(e, rr.Clear(recursive=False), 0)
            return
        ri = range_image(frame)
        seen = np.isfinite(ri.range)
        self._log("range/range", rr.DepthImage(np.where(seen, ri.range, 0).astype(np.float32), meter=1.0,
                                               colormap="turbo"), int(seen.sum()))
        rgb = np.zeros((*ri.range.shape, 3), np.uint8)  # black: no point
        rgb[seen] = intensity_rgb(ri.intensity[seen])
        self._log("range/intensity", rr.Image(rgb), int(seen.sum()))
        cls = np.full(ri.label.shape, NO_POINT, np.uint16)
        ids = self.palette.lut[np.maximum(ri.label, 0)]
        cls[ri.label >= 0] = np.where(ids >= 0, ids, NO_CLASS)[ri.label >= 0]
        self._log("range/label", rr.SegmentationImage(cls), int((ri.label >= 0).sum()))

    def blueprint(self):
        """The default layout: a tab per point colouring, occupancy, and (Waymo) the range images."""
        rrb = self.rr.blueprint
        boxes = [e for e in self.entities if e.startswith("world/boxes/")]
        r = self.src.store.attrs["point_cloud_range"]
        reach = 0.35 * max(float(r[3]) - float(r[0]), float(r[4]) - float(r[1]))  # behind and above the car
        eye = rrb.EyeControls3D(kind="Orbital", position=(-reach, -0.5 * reach, 0.6 * reach), look_target=(8, 0, 0),
                                eye_up=(0, 0, 1))
        tabs = [rrb.Spatial3DView(name=e.rsplit("/", 1)[1], origin="world", contents=[e, *boxes], eye_controls=eye)
                for e in self.entities if e.startswith("world/points/")]
        if "world/occupancy/truth" in self.entities:
            tabs.append(rrb.Spatial3DView(name="occupancy", origin="world", contents=["world/occupancy/**", *boxes],
                                          eye_controls=eye))
        active = "label" if "world/points/label" in self.entities else "intensity"
        rows = [rrb.Tabs(*tabs, active_tab=active)]
        if "range/range" in self.entities:  # 20:1 images: full width, stacked under the 3D views
            rows += [rrb.Spatial2DView(origin=e, name=e) for e in ("range/range", "range/intensity", "range/label")]
        rows.append(rrb.TextDocumentView(origin="frame", name="frame"))
        shares = [12, *[2] * (len(rows) - 2), 2]
        return rrb.Blueprint(rrb.Vertical(*rows, row_shares=shares), rrb.TimePanel(timeline="timestamp"))


def write_recording(store: Path, out: Path, frames: Sequence[str | int] | None = None, teacher: Path | None = None,
                    predictions: Path | None = None, cfg: ShowConfig | None = None,
                    progress: Callable[[int, int], None] | None = None) -> RecordingSummary:
    """Write ``frames`` (ids or indices; None: every frame of the store) as one Rerun recording at
    ``out`` (``.rrd``), with the entities of the module docstring. Inputs are checked as
    :func:`gpicture.viz.render.show` checks them (ValueError naming the file); ``out`` appears
    complete or not at all. ``progress(done, total)`` after each frame."""
    out = Path(out)
    if out.suffix.lower() != ".rrd":
        raise ValueError(f"{out}: --rerun must name a .rrd file")
    if out.is_dir() or (out.exists() and not out.is_file()):
        raise ValueError(f"{out}: exists and is not a file; a recording replaces only a file")
    cfg = cfg or ShowConfig()
    src = Sources.open(store, teacher, predictions)
    order = list(range(len(src.store))) if frames is None else [inputs.resolve_frame(src.store, f) for f in frames]
    if not order:
        raise ValueError(f"{store}: no frames to record")
    rr = import_rerun()
    with OutputLock(out) as lock:  # one writer per recording; a killed run's temporaries go
        remove_stale_temporaries(out)
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", suffix=".rrd", dir=out.parent)
        os.close(fd)
        tmp = Path(name)
        tmp.chmod(0o644)  # mkstemp's 0600 would make the recording private to its writer
        rec = None
        try:
            rec = rr.RecordingStream(f"gpicture-{src.dataset}")  # the viewer keeps one layout per application
            rec.set_log_time_enabled(False)  # the frames' own timelines only
            writer = _Writer(rr, rec, src, cfg)
            rec.save(tmp, default_blueprint=writer.blueprint())
            rec.send_recording_name(f"{src.dataset} {src.store.attrs.get('split', '')} · {src.store.path}")
            writer.log_static()
            for k, i in enumerate(order):
                writer.log_frame(i)
                if progress:
                    progress(k + 1, len(order))
            rec.flush()
            rec.disconnect()  # closes the file (and writes its footer) before the rename
            move_into_place(tmp, out, lock=lock)
        except BaseException:
            if rec is not None:
                rec.disconnect()  # the file sink lets go of the temporary before it is removed
            tmp.unlink(missing_ok=True)
            raise
    return RecordingSummary(out, writer.entities, writer.counts)
