"""The simulated recordings: a nuScenes-like scene (LIDAR_TOP sweeps at 20 Hz, keyframe
labels, occupancy) and Waymo-like frames (five lidars, two returns, labels) of a scene.

Each is deterministic for its seed; ``gpicture.synth.generate`` runs them over many
scenes and writes them in the real formats.
"""

from __future__ import annotations

import numpy as np

from gpicture.data.taxonomy import WAYMO_TYPE_CYCLIST
from gpicture.synth import portable as pm
from gpicture.synth.config import SynthConfig
from gpicture.synth.nuscenes_writer import LOCATIONS
from gpicture.synth.occupancy import occupancy
from gpicture.synth.records import (
    NuscenesScene,
    NuscenesSweep,
    ObjectStates,
    WaymoFrame,
    WaymoLaser,
    WaymoReturn,
)
from gpicture.synth.sensors import (
    ground_height,
    nuscenes_labels,
    nuscenes_lidar_top,
    points_in_boxes,
    scan,
    waymo_labels,
    waymo_lidars,
)
from gpicture.synth.taxonomy import OBJECT_CLASSES
from gpicture.synth.waymo_writer import vehicle_frame_boxes
from gpicture.synth.world import Scene, make_scene

NUSCENES_SWEEP_DT = 0.05  # 20 Hz
NUSCENES_SWEEPS_PER_KEYFRAME = 10  # keyframes at 2 Hz
WAYMO_FRAME_DT = 0.1  # 10 Hz
WAYMO_LASER_IDS = {"TOP": 1, "FRONT": 2, "SIDE_LEFT": 3, "SIDE_RIGHT": 4, "REAR": 5}


def _visibility_token(visible: np.ndarray, total: np.ndarray) -> np.ndarray:
    frac = np.where(total > 0, visible / np.maximum(total, 1), 0.0)
    return np.digitize(frac, [0.4, 0.6, 0.8]) + 1


def _objects_near(scene: Scene, t: float, centre_xy: np.ndarray, radius: float) -> tuple[ObjectStates, np.ndarray]:
    obj = scene.objects(t)
    near = pm.norm(obj.center[:, :2] - centre_xy, axis=1) <= radius
    idx = np.nonzero(near)[0]
    sub = ObjectStates(**{f: getattr(obj, f)[idx] for f in obj.__dataclass_fields__})
    return sub, idx


def simulate_nuscenes_scene(name: str, seed: int, cfg: SynthConfig, base_time_us: int,
                            keyframes_only: bool = False) -> NuscenesScene:
    """Simulate one nuScenes-like scene: all LIDAR_TOP sweeps, keyframe labels, occupancy.

    ``keyframes_only`` casts only the keyframes (the teacher pool needs no sweeps; the
    random stream then differs from a full run's, so only the pool uses it)."""
    spec = nuscenes_lidar_top()
    n_sweeps = cfg.sweeps_before + (cfg.frames - 1) * NUSCENES_SWEEPS_PER_KEYFRAME + 1
    duration = n_sweeps * NUSCENES_SWEEP_DT
    scene = make_scene(seed, duration, density=cfg.density)
    rng = np.random.default_rng(seed + 1)
    ring_of_row = np.arange(len(spec.inclinations))[::-1]  # row 0 is the top beam (ring 31)
    out = NuscenesScene(
        name=name,
        description=f"Synthetic drive: {scene.ego_speed:.1f} m/s through a junction, seed {seed}",
        location=list(LOCATIONS)[seed % len(LOCATIONS)],
        ego_from_sensor=spec.ego_from_sensor,
    )
    for i in range(n_sweeps):
        t = i * NUSCENES_SWEEP_DT + rng.uniform(-0.001, 0.001)
        key = i >= cfg.sweeps_before and (i - cfg.sweeps_before) % NUSCENES_SWEEPS_PER_KEYFRAME == 0
        if keyframes_only and not key:
            continue
        ego = scene.ego_pose(t)
        world_from_sensor = pm.matmul(ego, spec.ego_from_sensor)
        az = np.linspace(-np.pi, np.pi, spec.columns, endpoint=False) + rng.uniform(0, 2 * np.pi / spec.columns)
        sc = scan(scene, spec, t, world_from_sensor, az, rng, ego)
        r = sc.first
        v = r.valid
        sensor_from_world = pm.rigid_inverse(world_from_sensor)
        p = pm.apply(r.world[v], sensor_from_world[:3, :3], sensor_from_world[:3, 3])
        ring = np.broadcast_to(ring_of_row[:, None], (len(spec.inclinations), spec.columns)).ravel()[v]
        intensity = np.round(255.0 * r.intensity_factor[v])
        points = np.column_stack([p, intensity, ring]).astype(np.float32)
        sweep = NuscenesSweep(
            timestamp_us=base_time_us + round(t * 1e6),
            is_key_frame=key,
            world_from_ego=ego,
            points=points,
            lidarseg=nuscenes_labels(r.kind[v]).astype(np.uint8),
            instance=r.instance[v],
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


def _pose6(pose: np.ndarray) -> np.ndarray:
    """(…, 4, 4) world_from_vehicle -> (…, 6) roll, pitch, yaw, x, y, z (R = Rz Ry Rx)."""
    r = pose[..., :3, :3]
    pitch = pm.arcsin(-np.clip(r[..., 2, 0], -1, 1))
    roll = pm.arctan2(r[..., 2, 1], r[..., 2, 2])
    yaw = pm.arctan2(r[..., 1, 0], r[..., 0, 0])
    return np.stack([roll, pitch, yaw, pose[..., 0, 3], pose[..., 1, 3], pose[..., 2, 3]], -1)


def _pose_matrices(pose6: np.ndarray) -> np.ndarray:
    """(…, 6) roll, pitch, yaw (rad), x, y, z (m) -> (…, 4, 4) world_from_vehicle, rotation
    Rz(yaw) Ry(pitch) Rx(roll): the reader's ``pose_matrices``, with the portable sin / cos."""
    sr, cr = pm.sincos(pose6[..., 0])
    sp, cp = pm.sincos(pose6[..., 1])
    sy, cy = pm.sincos(pose6[..., 2])
    out = np.zeros(pose6.shape[:-1] + (4, 4))
    out[..., 0, 0], out[..., 0, 1], out[..., 0, 2] = cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr
    out[..., 1, 0], out[..., 1, 1], out[..., 1, 2] = sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr
    out[..., 2, 0], out[..., 2, 1], out[..., 2, 2] = -sp, cp * sr, cp * cr
    out[..., :3, 3] = pose6[..., 3:6]
    out[..., 3, 3] = 1.0
    return out


def simulate_waymo_frame(scene: Scene, context: str, t: float, time_us: int, labelled: bool,
                         rng: np.random.Generator) -> WaymoFrame:
    """Simulate one Waymo frame: five lidars, two returns each, labels."""
    frame_pose = scene.ego_pose(t)
    vehicle_from_world = pm.rigid_inverse(frame_pose)
    lasers: list[WaymoLaser] = []
    first_world: list[np.ndarray] = []
    vis = tot = None
    for spec in waymo_lidars():
        h, w = len(spec.inclinations), spec.columns
        ext = spec.ego_from_sensor
        az_corr = float(pm.arctan2(ext[1, 0], ext[0, 0]))
        az = ((np.arange(w, 0, -1) - 0.5) / w * 2.0 - 1.0) * np.pi - az_corr
        is_top = spec.name == "TOP"
        half_step = (spec.inclinations[-1] - spec.inclinations[0]) / (h - 1) / 2
        if is_top:  # rolling shutter: one vehicle pose per column, stored (float32) as the pixel pose
            col_t = t + (np.arange(w) / w - 0.5) * WAYMO_FRAME_DT
            pose6 = _pose6(scene.ego_pose(col_t)).astype(np.float32)
            poses = pm.matmul(_pose_matrices(pose6.astype(np.float64)), ext)
            pixel_pose = np.broadcast_to(pose6[None], (h, w, 6)).copy()
        else:
            poses, pixel_pose = pm.matmul(frame_pose, ext), None
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
            pv = pm.apply(r.world[r.valid], vehicle_from_world[:3, :3], vehicle_from_world[:3, 3])
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
    pts_v = pm.apply(np.concatenate(first_world), vehicle_from_world[:3, :3], vehicle_from_world[:3, 3])
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


def simulate_waymo_segment(seed: int, cfg: SynthConfig) -> tuple[str, list[WaymoFrame]]:
    """(context name, frames) of one Waymo-like segment: ``cfg.frames`` frames at 10 Hz,
    segmentation labels on every ``cfg.waymo_label_every``-th."""
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
    return context, frames
