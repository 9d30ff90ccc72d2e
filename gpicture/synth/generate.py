"""Scenes to datasets: simulate nuScenes-like scenes and Waymo-like segments and
write them in the real formats, in parallel over scenes, atomically.

The output folder is built under a temporary sibling and moved into place only
when complete, so an interrupted run never leaves something that looks finished.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpicture.atomic import move_into_place, temp_sibling
from gpicture.synth.occupancy import occupancy
from gpicture.synth.records import NuscenesScene, NuscenesSweep, ObjectStates, WaymoFrame, WaymoLaser, WaymoReturn
from gpicture.synth.sensors import (
    ground_height,
    nuscenes_lidar_top,
    nuscenes_labels,
    points_in_boxes,
    scan,
    waymo_labels,
    waymo_lidars,
)
from gpicture.data.taxonomy import WAYMO_TYPE_CYCLIST
from gpicture.synth.taxonomy import OBJECT_CLASSES
from gpicture.synth.waymo_writer import vehicle_frame_boxes, write_segment
from gpicture.synth.world import Scene, make_scene

NUSCENES_SWEEP_DT = 0.05  # 20 Hz
NUSCENES_SWEEPS_PER_KEYFRAME = 10  # keyframes at 2 Hz
WAYMO_FRAME_DT = 0.1  # 10 Hz
WAYMO_LASER_IDS = {"TOP": 1, "FRONT": 2, "SIDE_LEFT": 3, "SIDE_RIGHT": 4, "REAR": 5}
NUSCENES_VERSIONS = ("v1.0-mini", "v1.0-trainval")
LOCATIONS = ("singapore-onenorth", "boston-seaport", "singapore-queenstown", "singapore-hollandvillage")


class SynthError(ValueError):
    """Bad arguments to the synthetic data generator (one clear message)."""


@dataclass(frozen=True)
class SynthConfig:
    """What to generate (built once from the ``synth`` section of params.yaml)."""

    scenes: int  # scenes (nuScenes) or segments (Waymo)
    frames: int  # keyframes per scene (nuScenes, 2 Hz) or frames per segment (Waymo, 10 Hz)
    seed: int = 0
    val_fraction: float = 0.25
    density: float = 1.0  # agents per metre of road, relative to a busy city street
    sweeps_before: int = 10  # nuScenes: sweeps recorded before the first keyframe
    occupancy: bool = True  # nuScenes: write nuScenes-Occupancy files
    waymo_label_every: int = 5  # Waymo: segmentation labels on every n-th frame (2 Hz)
    zlib_level: int = 1  # Waymo range-image compression (1 is fast; the format allows any)
    workers: int = 1
    version: str = "v1.0-mini"  # nuScenes: v1.0-mini (<= 10 scenes, the official mini split) or v1.0-trainval

    def validate(self) -> None:
        for name in ("scenes", "frames", "workers", "waymo_label_every"):
            if getattr(self, name) < 1:
                raise SynthError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        if self.sweeps_before < 0:
            raise SynthError(f"--sweeps-before must be >= 0, got {self.sweeps_before}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise SynthError(f"val fraction must be in [0, 1), got {self.val_fraction}")
        if self.density <= 0:
            raise SynthError(f"density must be > 0, got {self.density}")
        if self.version not in NUSCENES_VERSIONS:
            raise SynthError(f"version must be one of {', '.join(NUSCENES_VERSIONS)}, got {self.version!r}")


def scene_seed(seed: int, dataset: str, index: int) -> int:
    """A stable per-scene seed (independent of the number of scenes and workers)."""
    return int.from_bytes(hashlib.sha256(f"{dataset}:{seed}:{index}".encode()).digest()[:8], "little")


def split_counts(n: int, val_fraction: float) -> tuple[int, int]:
    """(train, val) scene counts: at least one val scene when there are two or more."""
    n_val = 0 if n < 2 else max(1, int(round(n * val_fraction)))
    return n - n_val, n_val


def nuscenes_scene_names(n: int, version: str, val_fraction: float) -> list[str]:
    """Official scene names for n generated scenes, so the devkit's split lists place them.

    ``v1.0-mini`` uses the mini split (8 train, 2 val scenes; both val scenes as soon as
    n >= 3, because the lidarseg evaluation expects every scene of its split);
    ``v1.0-trainval`` takes names from the train and val lists.
    """
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    if version == "v1.0-mini":
        if n > 10:
            raise SynthError(f"v1.0-mini has 10 scenes, {n} asked for: use version v1.0-trainval")
        n_val = min(2, max(n - 1, 0))
        return splits["mini_train"][: n - n_val] + splits["mini_val"][:n_val]
    n_train, n_val = split_counts(n, val_fraction)
    return splits["train"][:n_train] + splits["val"][:n_val]


def _visibility_token(visible: np.ndarray, total: np.ndarray) -> np.ndarray:
    frac = np.where(total > 0, visible / np.maximum(total, 1), 0.0)
    return np.digitize(frac, [0.4, 0.6, 0.8]) + 1


def _objects_near(scene: Scene, t: float, centre_xy: np.ndarray, radius: float) -> tuple[ObjectStates, np.ndarray]:
    obj = scene.objects(t)
    near = np.linalg.norm(obj.center[:, :2] - centre_xy, axis=1) <= radius
    idx = np.nonzero(near)[0]
    sub = ObjectStates(**{f: getattr(obj, f)[idx] for f in obj.__dataclass_fields__})
    return sub, idx


# ---------------------------------------------------------------------------------------
# nuScenes
# ---------------------------------------------------------------------------------------


def simulate_nuscenes_scene(name: str, seed: int, cfg: SynthConfig, base_time_us: int) -> NuscenesScene:
    """Simulate one nuScenes-like scene: all LIDAR_TOP sweeps, keyframe labels, occupancy."""
    spec = nuscenes_lidar_top()
    n_sweeps = cfg.sweeps_before + (cfg.frames - 1) * NUSCENES_SWEEPS_PER_KEYFRAME + 1
    duration = n_sweeps * NUSCENES_SWEEP_DT
    scene = make_scene(seed, duration, density=cfg.density)
    rng = np.random.default_rng(seed + 1)
    ring_of_row = np.arange(len(spec.inclinations))[::-1]  # row 0 is the top beam (ring 31)
    out = NuscenesScene(
        name=name,
        description=f"Synthetic drive: {scene.ego_speed:.1f} m/s through a junction, seed {seed}",
        location=LOCATIONS[seed % len(LOCATIONS)],
        ego_from_sensor=spec.ego_from_sensor,
    )
    for i in range(n_sweeps):
        t = i * NUSCENES_SWEEP_DT + rng.uniform(-0.001, 0.001)
        key = i >= cfg.sweeps_before and (i - cfg.sweeps_before) % NUSCENES_SWEEPS_PER_KEYFRAME == 0
        ego = scene.ego_pose(t)
        world_from_sensor = ego @ spec.ego_from_sensor
        az = np.linspace(-np.pi, np.pi, spec.columns, endpoint=False) + rng.uniform(0, 2 * np.pi / spec.columns)
        sc = scan(scene, spec, t, world_from_sensor, az, rng, ego)
        r = sc.first
        v = r.valid
        sensor_from_world = np.linalg.inv(world_from_sensor)
        p = r.world[v] @ sensor_from_world[:3, :3].T + sensor_from_world[:3, 3]
        ring = np.broadcast_to(ring_of_row[:, None], (len(spec.inclinations), spec.columns)).ravel()[v]
        intensity = np.round(255.0 * r.intensity_factor[v])
        points = np.column_stack([p, intensity, ring]).astype(np.float32)
        sweep = NuscenesSweep(
            timestamp_us=base_time_us + int(round(t * 1e6)),
            is_key_frame=key,
            world_from_ego=ego,
            points=points,
            lidarseg=nuscenes_labels(r.kind[v]).astype(np.uint8),
        )
        if key:
            objects, idx = _objects_near(scene, t, ego[:2, 3], 80.0)
            objects.num_points = points_in_boxes(r.world[v], objects.center, objects.size, objects.yaw)
            objects.visibility = _visibility_token(sc.owner_visible[idx], sc.owner_total[idx])
            sweep.objects = objects
            if cfg.occupancy:
                boxes, kind, _, owner = scene.boxes(t)
                prio = np.where(owner >= 0, 2, 1)
                sweep.occupancy = occupancy(
                    boxes, kind, prio, scene.world.ground_kind,
                    lambda x, y: ground_height(scene, x, y), world_from_sensor,
                )
        out.sweeps.append(sweep)
    return out


def _nuscenes_job(args: tuple[str, int, SynthConfig, int]) -> NuscenesScene:
    return simulate_nuscenes_scene(*args)


def generate_nuscenes(cfg: SynthConfig, out: Path, force: bool = False,
                      progress: Callable[[int, int], None] | None = None) -> dict:
    """Write ``cfg.scenes`` scenes as a nuScenes v1.0-trainval dataset under ``out``."""
    from nuscenes.utils.splits import create_splits_scenes

    from gpicture.synth.nuscenes_writer import write_nuscenes

    cfg.validate()
    names = nuscenes_scene_names(cfg.scenes, cfg.version, cfg.val_fraction)
    val_split = create_splits_scenes()["mini_val" if cfg.version == "v1.0-mini" else "val"]
    n_val = sum(n in val_split for n in names)
    n_train = len(names) - n_val
    jobs = [(nm, scene_seed(cfg.seed, "nuscenes", i), cfg, 1_532_402_927_000_000 + i * 3_600_000_000)
            for i, nm in enumerate(names)]
    with _atomic_dir(out, force) as tmp:
        scenes = _run_parallel(_nuscenes_job, jobs, cfg.workers, progress)
        write_nuscenes(scenes, tmp, version=cfg.version)
    n_sweeps = sum(len(s.sweeps) for s in scenes)
    return {"scenes": len(scenes), "train": n_train, "val": n_val, "sweeps": n_sweeps,
            "keyframes": sum(sw.is_key_frame for s in scenes for sw in s.sweeps)}


# ---------------------------------------------------------------------------------------
# Waymo
# ---------------------------------------------------------------------------------------


def _pose6(pose: np.ndarray) -> np.ndarray:
    """(…, 4, 4) world_from_vehicle -> (…, 6) roll, pitch, yaw, x, y, z (R = Rz Ry Rx)."""
    r = pose[..., :3, :3]
    pitch = np.arcsin(-np.clip(r[..., 2, 0], -1, 1))
    roll = np.arctan2(r[..., 2, 1], r[..., 2, 2])
    yaw = np.arctan2(r[..., 1, 0], r[..., 0, 0])
    return np.stack([roll, pitch, yaw, pose[..., 0, 3], pose[..., 1, 3], pose[..., 2, 3]], -1)


def _pose_from6(p: np.ndarray) -> np.ndarray:
    roll, pitch, yaw = p[..., 0], p[..., 1], p[..., 2]
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    out = np.zeros(p.shape[:-1] + (4, 4))
    out[..., 0, 0], out[..., 0, 1], out[..., 0, 2] = cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr
    out[..., 1, 0], out[..., 1, 1], out[..., 1, 2] = sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr
    out[..., 2, 0], out[..., 2, 1], out[..., 2, 2] = -sp, cp * sr, cp * cr
    out[..., :3, 3] = p[..., 3:6]
    out[..., 3, 3] = 1.0
    return out


def simulate_waymo_frame(scene: Scene, context: str, t: float, time_us: int, labelled: bool,
                         rng: np.random.Generator) -> WaymoFrame:
    """Simulate one Waymo frame: five lidars, two returns each, labels."""
    frame_pose = scene.ego_pose(t)
    vehicle_from_world = np.linalg.inv(frame_pose)
    lasers: list[WaymoLaser] = []
    first_world: list[np.ndarray] = []
    vis = tot = None
    for spec in waymo_lidars():
        h, w = len(spec.inclinations), spec.columns
        ext = spec.ego_from_sensor
        az_corr = np.arctan2(ext[1, 0], ext[0, 0])
        az = ((np.arange(w, 0, -1) - 0.5) / w * 2.0 - 1.0) * np.pi - az_corr
        is_top = spec.name == "TOP"
        half_step = (spec.inclinations[-1] - spec.inclinations[0]) / (h - 1) / 2
        if is_top:  # rolling shutter: one vehicle pose per column, stored (float32) as the pixel pose
            col_t = t + (np.arange(w) / w - 0.5) * WAYMO_FRAME_DT
            pose6 = _pose6(scene.ego_pose(col_t)).astype(np.float32)
            poses = _pose_from6(pose6.astype(np.float64)) @ ext
            pixel_pose = np.broadcast_to(pose6[None], (h, w, 6)).copy()
        else:
            poses, pixel_pose = frame_pose @ ext, None
        sc = scan(scene, spec, t, poses, az, rng, frame_pose)
        if is_top:
            vis, tot = sc.owner_visible, sc.owner_total
        rets, pts = [], []
        for k, r in enumerate((sc.first, sc.second)):
            img = np.zeros((h * w, 4), np.float32)
            img[:, 0] = np.where(r.valid, r.range, -1.0)
            img[:, 1] = np.where(r.valid, r.intensity_factor * 1.2, 0.0)
            elong = np.clip((1.0 - r.cos_incidence) * 0.6 + rng.normal(0, 0.02, h * w), 0.0, 1.5)
            img[:, 2] = np.where(r.valid, elong, 0.0)
            img[:, 3] = -1.0
            seg = None
            if is_top and labelled:
                seg = np.zeros((h * w, 2), np.int32)
                seg[:, 0] = np.where(r.valid, r.instance, 0)
                seg[:, 1] = waymo_labels(r.kind, r.valid)
                seg = seg.reshape(h, w, 2)
            rets.append(WaymoReturn(range_image=img.reshape(h, w, 4), segmentation=seg))
            pv = r.world[r.valid] @ vehicle_from_world[:3, :3].T + vehicle_from_world[:3, 3]
            pts.append(pv.astype(np.float32))
            if k == 0:
                first_world.append(r.world[r.valid])
        lasers.append(WaymoLaser(
            name=WAYMO_LASER_IDS[spec.name], vehicle_from_sensor=ext,
            beam_inclinations=spec.inclinations if is_top else None,
            # Uniform beams are stored as the field of view's edges (beam centres sit half a step in).
            inclination_min=float(spec.inclinations[0] - (0 if is_top else half_step)),
            inclination_max=float(spec.inclinations[-1] + (0 if is_top else half_step)),
            returns=(rets[0], rets[1]), pixel_pose=pixel_pose, points=(pts[0], pts[1]),
        ))
    objects, idx = _objects_near(scene, t, frame_pose[:2, 3], 80.0)
    # Counted in the boxes as Waymo states them: 7-DOF, upright in the vehicle frame.
    v_center, v_heading, _ = vehicle_frame_boxes(objects, frame_pose)
    pts_v = np.concatenate(first_world) @ vehicle_from_world[:3, :3].T + vehicle_from_world[:3, 3]
    objects.num_points = points_in_boxes(pts_v, v_center, objects.size, v_heading)
    objects.visibility = _visibility_token(vis[idx], tot[idx])
    wtype = np.array([OBJECT_CLASSES[scene.agents.cls[i]].waymo_type for i in idx], dtype=np.int64)
    wtype = np.where((wtype == WAYMO_TYPE_CYCLIST) & ~scene.agents.rider[idx], 0, wtype)  # parked cycles
    wtype = np.where(objects.num_points > 0, wtype, 0)
    return WaymoFrame(
        context_name=context, timestamp_us=time_us, world_from_vehicle=frame_pose, lasers=lasers,
        objects=objects, waymo_type=wtype, difficulty=np.where(objects.num_points <= 5, 2, 1),
        has_segmentation=labelled,
    )


def waymo_context_name(seed: int) -> str:
    rng = np.random.default_rng(seed)
    start = int(rng.integers(1000, 9000))
    return f"{int(rng.integers(10**18, 10**19 - 1, dtype=np.uint64))}_{start}_000_{start + 20}_000"


def _waymo_job(args: tuple[Path, int, SynthConfig]) -> int:

    folder, seed, cfg = args
    context = waymo_context_name(seed)
    duration = cfg.frames * WAYMO_FRAME_DT + 0.2
    scene = make_scene(seed, duration, density=cfg.density)
    rng = np.random.default_rng(seed + 1)
    base = 1_550_000_000_000_000 + (seed % 10**6) * 10**6
    frames = [
        simulate_waymo_frame(scene, context, 0.05 + k * WAYMO_FRAME_DT, base + int((0.05 + k * WAYMO_FRAME_DT) * 1e6),
                             k % cfg.waymo_label_every == 0, rng)
        for k in range(cfg.frames)
    ]
    write_segment(frames, folder / f"segment-{context}_with_camera_labels.tfrecord", zlib_level=cfg.zlib_level)
    return len(frames)


def generate_waymo(cfg: SynthConfig, out: Path, force: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> dict:
    """Write ``cfg.scenes`` segments as Waymo tfrecords under ``out/{training,validation}``."""
    cfg.validate()
    n_train, n_val = split_counts(cfg.scenes, cfg.val_fraction)
    with _atomic_dir(out, force) as tmp:
        jobs = []
        for i in range(cfg.scenes):
            folder = tmp / ("training" if i < n_train else "validation")
            folder.mkdir(exist_ok=True)
            jobs.append((folder, scene_seed(cfg.seed, "waymo", i), cfg))
        frames = _run_parallel(_waymo_job, jobs, cfg.workers, progress)
    return {"segments": cfg.scenes, "train": n_train, "val": n_val, "frames": int(sum(frames))}


# ---------------------------------------------------------------------------------------
# Plumbing
# ---------------------------------------------------------------------------------------


def _run_parallel(fn, jobs: list, workers: int, progress) -> list:  # noqa: ANN001
    results: list = [None] * len(jobs)
    if workers <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            results[i] = fn(job)
            if progress:
                progress(i + 1, len(jobs))
        return results
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
        done = 0
        from concurrent.futures import as_completed

        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            done += 1
            if progress:
                progress(done, len(jobs))
    return results


class _atomic_dir:  # noqa: N801  (used as a context manager)
    """Build a folder under a temporary sibling; move it into place on success only."""

    def __init__(self, out: Path, force: bool) -> None:
        self.out = Path(out)
        self.force = force

    def __enter__(self) -> Path:
        out = self.out
        if out.exists() and not out.is_dir():
            raise SynthError(f"{out}: exists and is not a folder")
        if out.exists() and any(out.iterdir()) and not self.force:
            raise SynthError(f"{out}: exists and is not empty (use --force to replace it)")
        try:
            self.tmp = temp_sibling(out)
        except OSError as exc:
            raise SynthError(f"{out}: cannot write there ({exc.strerror or exc})") from exc
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        move_into_place(self.tmp, self.out)
