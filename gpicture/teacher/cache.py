"""The teacher-feature cache: one 64-d Seal feature per canonical voxel of a store (read back by
:class:`gpicture.teacher.store.TeacherStore`, re-exported here).

For each frame of a voxel store, the (keyframe) points are quantized in the teacher's
own convention (``gpicture.teacher.voxels``: Seal's cylindrical 0.1 m / 1 degree voxels
and raw intensity in params.yaml) with the voxel's mean input channel, the frozen teacher runs on a batch of frames, and each teacher voxel's output
is averaged into the store's canonical voxels through the points they share. The
result is a Zarr store aligned row for row with the source's voxels:

    features (V, 64) float16 | int8     scale (V,) float32 (int8 only: row = int8 * scale)
    valid (V,) bool                     False where no teacher point fell in the voxel
    frames/voxel_ptr int64 (F + 1,)     the source's voxel pointers

Work is written to ``.<name>.partial`` next to the output with the number of frames
done; an interrupted run resumes there (if the source, checkpoint and settings still
match) and the folder is moved into place only when complete, recording first what it
holds (:mod:`gpicture.data.integrity`: checked on open, every chunk with a CRC32C). A
damaged source store stops the run and removes the partial work (nothing half-written
is left to resume); a failed write (a full disk) names the path and keeps the partial
work, which resumes.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpicture.atomic import OutputError, OutputLock, claim_output, move_into_place
from gpicture.data.chunks import WRITE_CONFIG, compressors, settle_writes
from gpicture.data.integrity import RECORD_KEY, check_present, record_store
from gpicture.data.store import StoreError, VoxelStore
from gpicture.teacher.store import CHUNK, TEACHER_FORMAT, TeacherStore
from gpicture.teacher.voxels import (
    COORDINATES,
    TRANSFORMS,
    TeacherVoxels,
    input_channel,
    teacher_voxels,
)

if TYPE_CHECKING:  # annotations only: zarr is imported where a cache is opened or written; the teacher
    import zarr  # needs MinkowskiEngine to build a cache, reading does not

    from gpicture.teacher.seal import SealTeacher

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
DIM = 64


@dataclass(frozen=True)
class TeacherConfig:
    """How teacher features are computed (the ``teacher`` section of params.yaml)."""

    voxel_size: float = 0.2  # m, the teacher's own quantization (radius and z bins when cylindrical)
    input_scale: float = 1.0  # intensity multiplier for the input channel (Seal on nuScenes: 1, raw 0..255)
    coordinates: str = "cartesian"  # or "cylindrical" (Seal / SLidR: radius, azimuth, z)
    angle_bin_deg: float = 1.0  # azimuth bin of cylindrical voxels, degrees (SLidR: 1)
    input_transform: str = "identity"  # or "tanh" (GPICTURE's Waymo input)
    keyframe_only: bool = True  # only points with time_lag 0 / return_index 0 feed the teacher
    batch_frames: int = 2
    dtype: str = "float16"  # or "int8"

    @classmethod
    def from_params(cls, sec: dict[str, Any], dataset: str, dtype: str | None = None) -> TeacherConfig:
        """The config of ``dataset`` from the ``teacher`` section of params.yaml (per-dataset
        keys ``input_scale`` / ``input_transform`` may be a mapping dataset -> value)."""
        def per_dataset(key: str, default: Any) -> Any:
            v = sec.get(key, default)
            return v.get(dataset, default) if isinstance(v, dict) else v

        return cls(
            voxel_size=float(sec.get("voxel_size", 0.2)),
            input_scale=float(per_dataset("input_scale", 1.0)),
            coordinates=str(sec.get("coordinates", "cartesian")),
            angle_bin_deg=float(sec.get("angle_bin_deg", 1.0)),
            input_transform=str(per_dataset("input_transform", "identity")),
            keyframe_only=bool(sec.get("keyframe_only", True)),
            batch_frames=int(sec.get("batch_frames", 2)),
            dtype=dtype or str(sec.get("dtype", "float16")),
        )

    def convention(self) -> dict[str, Any]:
        """The voxelization a checkpoint must have been trained with (the input channel's
        scaling may differ by dataset: GPICTURE runs nuScenes weights on tanh'd Waymo)."""
        return {"voxel_size": self.voxel_size, "coordinates": self.coordinates, "angle_bin_deg": self.angle_bin_deg}

    def validate(self) -> None:
        if self.voxel_size <= 0 or self.batch_frames < 1:
            raise ValueError(f"teacher voxel_size must be > 0 and batch_frames >= 1, got {self}")
        if self.coordinates not in COORDINATES or self.input_transform not in TRANSFORMS or self.angle_bin_deg <= 0:
            raise ValueError(f"teacher coordinates must be one of {COORDINATES}, input_transform one of {TRANSFORMS} "
                             f"and angle_bin_deg > 0, got {self}")
        if self.dtype not in ("float16", "int8"):
            raise ValueError(f"teacher dtype must be float16 or int8, got {self.dtype!r}")


def _teacher_points(fr, cfg: TeacherConfig) -> np.ndarray:  # noqa: ANN001
    """Mask of the frame's points that feed the teacher: inside the grid, keyframe only."""
    keep = fr.point_voxel >= 0
    if cfg.keyframe_only:
        if "time_lag" in fr.features:
            keep &= fr.features["time_lag"] == 0
        if "return_index" in fr.features:
            keep &= fr.features["return_index"] == 0
    return keep


def frame_teacher_voxels(fr, keep: np.ndarray, cfg: TeacherConfig) -> TeacherVoxels:  # noqa: ANN001
    """The teacher input of a frame's ``keep`` points in the configured convention."""
    channel = input_channel(fr.features["intensity"][keep], cfg.input_scale, cfg.input_transform)
    return teacher_voxels(fr.points[keep], channel, cfg.voxel_size, cfg.coordinates, cfg.angle_bin_deg)


class NonFiniteFeatures(ValueError):
    """The teacher produced NaN / inf features for a frame (raised before anything is written)."""


def _check_finite(frames: list, out: np.ndarray, inputs: list[np.ndarray], teacher: SealTeacher) -> None:
    """NonFiniteFeatures naming the first frame whose teacher outputs are not all finite, and
    why when it can tell (non-finite input channel in the store, else the network itself)."""
    bad_rows = ~np.isfinite(out).all(1)
    if not bad_rows.any():
        return
    offset = 0
    for fr, inp in zip(frames, inputs, strict=True):
        n_t = len(inp)
        bad = int(bad_rows[offset:offset + n_t].sum())
        if bad:
            bad_in = int((~np.isfinite(inp)).sum())
            cause = (f"{bad_in} of its teacher input values (intensity) are non-finite in the store: reconvert it"
                     if bad_in else f"the teacher ({teacher.description}) overflowed on finite input")
            raise NonFiniteFeatures(f"frame {fr.frame_id!r} (index {fr.index}): {bad} of {n_t} teacher voxels have "
                                    f"non-finite (NaN / inf) features; {cause}. Nothing of this frame was written")
        offset += n_t


def frame_batch_features(teacher: SealTeacher, frames: list, cfg: TeacherConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Teacher features averaged into each frame's canonical voxels: per frame
    ((V_i, 64) float32, (V_i,) bool valid). NonFiniteFeatures (a ValueError naming the frame)
    when the teacher's output holds NaN or inf: such features never reach a store."""
    coords, feats, links = [], [], []
    offset = 0
    for b, fr in enumerate(frames):
        keep = _teacher_points(fr, cfg)
        tv = frame_teacher_voxels(fr, keep, cfg)
        n_t = len(tv.coords)
        coords.append(np.column_stack([np.full(n_t, b, np.int32), tv.coords]))
        feats.append(tv.features)
        # (teacher voxel, student voxel) links, one per distinct pair
        pair = np.unique(np.column_stack([tv.point_voxel + offset, fr.point_voxel[keep]]), axis=0)
        links.append(pair)
        offset += n_t
    out = teacher.encode(np.concatenate(coords), np.concatenate(feats)) if offset else np.zeros((0, DIM), np.float32)
    _check_finite(frames, out, feats, teacher)
    result = []
    for fr, pair in zip(frames, links, strict=True):
        v = len(fr.voxel_coords)
        acc = np.zeros((v, DIM), np.float64)
        np.add.at(acc, pair[:, 1], out[pair[:, 0]])
        count = np.bincount(pair[:, 1], minlength=v)
        valid = count > 0
        acc[valid] /= count[valid, None]
        result.append((acc.astype(np.float32), valid))
    return result


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: x ~ q * scale."""
    scale = np.abs(x).max(1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.round(x / scale[:, None]), -127, 127).astype(np.int8), scale


def _settings(source: VoxelStore, teacher: SealTeacher, cfg: TeacherConfig) -> dict[str, Any]:
    return {
        "source_store_fingerprint": source.fingerprint,
        "source_store": str(source.path),
        "source_n_voxels": source.n_voxels,
        "source_n_frames": len(source),
        "checkpoint_sha256": teacher.sha256,
        "checkpoint": None if teacher.checkpoint is None else str(teacher.checkpoint),
        "random_init": teacher.is_random,
        "random_init_seed": (teacher.metadata or {}).get("seed", teacher.seed) if teacher.is_random else None,
        "teacher_kind": teacher.kind,
        "teacher_description": teacher.description,
        "teacher": "Res16UNet34C (MinkowskiEngine), in 1 -> out 64, L2-normalised",
        "teacher_voxel_size": cfg.voxel_size,
        "config": asdict(cfg),
    }


def _open_partial(partial: Path, settings: dict[str, Any], source: VoxelStore, cfg: TeacherConfig) -> zarr.Group:
    import zarr  # lazy: zarr only to write a cache, not for the pre-training code importing this module

    if partial.exists():
        try:
            g = zarr.open_group(str(partial), mode="r+")
            if json.dumps(g.attrs.get("settings"), sort_keys=True) == json.dumps(settings, sort_keys=True):
                log.info("teacher: resuming %s at frame %d", partial, g.attrs["frames_done"])
                return g
        except Exception:  # noqa: BLE001  (an unreadable leftover is simply replaced)
            pass
        log.warning("teacher: discarding %s (made for another source, checkpoint or settings)", partial)
        shutil.rmtree(partial)
    g = zarr.open_group(str(partial), mode="w")
    comp = compressors()  # Blosc/zstd + CRC32C, as a voxel store's; every chunk written (WRITE_CONFIG)
    v = source.n_voxels
    g.create_array("features", shape=(v, DIM), chunks=(CHUNK, DIM), dtype=cfg.dtype, compressors=comp,
                   config=WRITE_CONFIG)
    if cfg.dtype == "int8":
        g.create_array("scale", shape=(v,), chunks=(CHUNK,), dtype="float32", compressors=comp, config=WRITE_CONFIG)
    g.create_array("valid", shape=(v,), chunks=(CHUNK,), dtype="bool", compressors=comp, config=WRITE_CONFIG)
    ptr = np.array([source.voxel_range(i)[0] for i in range(len(source))] + [v], dtype=np.int64)
    g.create_array("frames/voxel_ptr", data=ptr, chunks=(4096,), compressors=comp, config=WRITE_CONFIG)
    g.attrs.update({"format": TEACHER_FORMAT, "schema_version": SCHEMA_VERSION, "settings": settings,
                    "frames_done": 0, "complete": False})
    return g


def build_teacher_store(source_path: Path, out: Path, teacher: SealTeacher, cfg: TeacherConfig, force: bool = False,
                        progress: Callable[[int, int], None] | None = None,
                        stop_after: int | None = None) -> dict[str, Any]:
    """Compute (or resume) the teacher cache of a voxel store. ``stop_after`` frames is
    for tests of interruption: the run stops there, leaving the partial folder."""
    cfg.validate()
    source = VoxelStore.open(source_path)
    out = Path(out)
    # One writer per output: a second run on the same --out fails here at once instead of
    # removing the first one's partial work; --force replaces only a teacher store.
    try:
        with claim_output(out, TEACHER_FORMAT, force=force) as lock:
            return _build(source, out, teacher, cfg, lock, progress, stop_after)
    except OutputError as exc:
        raise StoreError(str(exc)) from None


def _build(source: VoxelStore, out: Path, teacher: SealTeacher, cfg: TeacherConfig, lock: OutputLock,
           progress: Callable[[int, int], None] | None, stop_after: int | None) -> dict[str, Any]:
    """:func:`build_teacher_store`'s work, under the claim ``lock`` on ``out``: a write that fails
    (a full disk) is a StoreError naming the path, raised once Zarr's pending writes are done
    (the partial work stays and resumes)."""
    partial = out.with_name(f".{out.name}.partial")
    try:
        return _fill(source, out, partial, teacher, cfg, lock, progress, stop_after)
    except OutputError:
        raise
    except OSError as exc:
        settle_writes()
        raise StoreError(f"{out}: cannot write the teacher store: {exc.strerror or exc} (writing "
                         f"{exc.filename or partial}); the frames done so far stay in {partial} and resume: free "
                         "space, then run `gpicture teacher` again") from None


def _fill(source: VoxelStore, out: Path, partial: Path, teacher: SealTeacher, cfg: TeacherConfig, lock: OutputLock,
          progress: Callable[[int, int], None] | None, stop_after: int | None) -> dict[str, Any]:
    """Compute the remaining frames into ``partial``, record it, move it to ``out``."""
    import zarr  # lazy, as _open_partial

    settings = _settings(source, teacher, cfg)
    g = _open_partial(partial, settings, source, cfg)
    with zarr.config.set({f"array.{k}": v for k, v in WRITE_CONFIG.items()}):  # resumed arrays too
        arrays = {name: g[name] for name in ("features", "valid", *(("scale",) if cfg.dtype == "int8" else ()))}
    n = len(source)
    start = int(g.attrs["frames_done"])
    done_now = 0
    for b0 in range(start, n, cfg.batch_frames):
        b1 = min(b0 + cfg.batch_frames, n)
        try:
            frames = [source.frame(i, labels=False) for i in range(b0, b1)]  # the teacher sees no label
        except StoreError as exc:  # a damaged source: nothing computed from it may be resumed later
            settle_writes()
            shutil.rmtree(partial, ignore_errors=True)
            raise StoreError(f"{exc}; {out} not written (its partial work {partial} removed)") from None
        try:
            feats = frame_batch_features(teacher, frames, cfg)
        except NonFiniteFeatures as exc:  # the partial keeps only the frames before this batch (all finite)
            raise NonFiniteFeatures(f"{source.path}: {exc}; {out} not written") from None
        v0, v1 = source.voxel_range(b0)[0], source.voxel_range(b1 - 1)[1]
        block = np.concatenate([f for f, _ in feats]) if feats else np.zeros((0, DIM), np.float32)
        if cfg.dtype == "int8":
            q, scale = quantize_int8(block)
            arrays["features"][v0:v1] = q
            arrays["scale"][v0:v1] = scale
        else:
            arrays["features"][v0:v1] = block.astype(np.float16)
        arrays["valid"][v0:v1] = np.concatenate([m for _, m in feats])
        g.attrs["frames_done"] = b1  # only after the rows are written: a resume redoes at most one batch
        done_now += b1 - b0
        if progress:
            progress(b1, n)
        if stop_after is not None and done_now >= stop_after and b1 < n:
            return {"frames": b1, "complete": False}
    # What the store must hold, checked once here (every chunk is a file: WRITE_CONFIG), then kept.
    record = record_store(partial).to_attrs()
    check_present(partial, {RECORD_KEY: record}, "a writer bug: Zarr skipped a chunk")
    g.attrs[RECORD_KEY] = record
    g.attrs["complete"] = True
    move_into_place(partial, out, lock=lock)  # the Zarr format attribute says the kind (a marker file would be a stray Zarr member)
    valid = TeacherStore.open(out).valid_fraction()
    return {"frames": n, "voxels": source.n_voxels, "valid_fraction": round(valid, 4), "complete": True,
            "resumed_from": start}


__all__ = ["TEACHER_FORMAT", "TeacherConfig", "TeacherStore", "build_teacher_store", "frame_batch_features",
           "quantize_int8"]
