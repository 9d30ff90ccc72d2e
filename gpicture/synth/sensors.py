"""Simulated LiDARs: nuScenes' LIDAR_TOP and Waymo's five lidars.

A sensor is a grid of beams (rows: elevation, columns: azimuth) cast into the scene
with :func:`gpicture.synth.raycast.cast`. Range noise, random dropouts, intensity
from the surface's reflectivity and the incidence angle, and partly transparent
vegetation (second returns) make the returns look like the real sensors'. Labels
(lidarseg raw class, Waymo class, instance) come from the surface each ray hit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpicture.synth import portable as pm
from gpicture.synth.raycast import Boxes, Hits, cast
from gpicture.synth.streets import CURB_H
from gpicture.synth.taxonomy import (
    KIND_REFLECTIVITY,
    KIND_TO_NUSCENES,
    KIND_TO_WAYMO_SEG,
    KIND_TRANSPARENCY,
)
from gpicture.synth.world import Scene

SPECKLE_SIGMA = 0.5  # log-normal spread of the intensity of one surface (see _returns)


def rot_z(yaw: float) -> np.ndarray:
    s, c = (float(v) for v in pm.sincos(yaw))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def transform(rotation: np.ndarray, translation) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = translation
    return out


@dataclass(frozen=True)
class LidarSpec:
    """A spinning (or fixed-FOV) LiDAR mounted on the ego vehicle."""

    name: str
    inclinations: np.ndarray  # (H,) ascending beam elevations, rad
    columns: int
    ego_from_sensor: np.ndarray  # (4, 4)
    max_range: float
    min_range: float
    range_noise: float  # std, m
    dropout: float  # probability a return is lost
    half_fov: float = np.pi  # sensor-frame azimuth half field of view, rad


def nuscenes_lidar_top() -> LidarSpec:
    """Velodyne HDL-32E as mounted on the nuScenes cars (x right, y forward in the sensor)."""
    return LidarSpec(
        name="LIDAR_TOP",
        inclinations=np.deg2rad(np.linspace(-30.67, 10.67, 32)),
        columns=1084,
        ego_from_sensor=transform(rot_z(-np.pi / 2), [0.943, 0.0, 1.84]),
        max_range=70.0,
        min_range=1.0,
        range_noise=0.015,
        dropout=0.01,
    )


def waymo_lidars() -> list[LidarSpec]:
    """Waymo's TOP lidar (64 beams, non-uniform inclinations) and its four short-range lidars."""
    u = np.linspace(0.0, 1.0, 64)
    top_incl = np.deg2rad(-17.6 + 20.0 * (0.6 * u + 0.4 * (1.0 - (1.0 - u) ** 2)))
    specs = [LidarSpec("TOP", top_incl, 2650, transform(rot_z(0.0148), [1.43, 0.0, 2.184]), 75.0, 0.8, 0.01, 0.005)]
    sr_incl = np.deg2rad(-90.0 + 120.0 * (np.arange(200) + 0.5) / 200)  # uniform, -90..30 deg
    for name, xyz, yaw in (("FRONT", [4.07, 0.0, 0.69], 0.0), ("SIDE_LEFT", [3.25, 1.03, 0.93], np.pi / 2),
                           ("SIDE_RIGHT", [3.25, -1.03, 0.93], -np.pi / 2), ("REAR", [-1.15, 0.0, 0.47], np.pi)):
        specs.append(LidarSpec(name, sr_incl, 600, transform(rot_z(yaw), xyz), 20.0, 0.3, 0.01, 0.005, np.deg2rad(45.0)))
    return specs


@dataclass
class Returns:
    """One return of every ray of a scan (row-major over the H x W beam grid)."""

    valid: np.ndarray  # (R,) bool
    range: np.ndarray  # (R,) float32 m, noisy (0 where invalid)
    intensity_factor: np.ndarray  # (R,) 0..1 reflectivity x incidence x distance falloff
    cos_incidence: np.ndarray  # (R,)
    kind: np.ndarray  # (R,) int kind of the surface (-1 where invalid)
    instance: np.ndarray  # (R,) int64 object instance id, 0 for stuff / none
    world: np.ndarray  # (R, 3) the measured point (noisy range along the ray), world frame


@dataclass
class Scan:
    """A scan: both returns, plus the per-object ray counts used for visibility."""

    first: Returns
    second: Returns
    owner_visible: np.ndarray  # (A,) rays whose first surface belongs to each agent
    owner_total: np.ndarray  # (A,) rays that pass through each agent at all


def scan(
    scene: Scene,
    spec: LidarSpec,
    t: float,
    world_from_sensor_cols: np.ndarray,
    azimuths: np.ndarray,
    rng: np.random.Generator,
    ego_pose: np.ndarray,
) -> Scan:
    """Cast one scan of `spec` at scene time t.

    ``world_from_sensor_cols`` is (W, 4, 4) (one pose per column: rolling shutter) or
    (4, 4); ``azimuths`` (W,) sensor-frame column azimuths. Rays leaving outside the
    sensor's field of view, or hitting the ego vehicle itself, give no return.
    """
    h, w = len(spec.inclinations), len(azimuths)
    incl = spec.inclinations[::-1]  # row 0 = highest beam, as in range images
    si, ci = (v[:, None] for v in pm.sincos(incl))
    sa, ca = pm.sincos(azimuths)
    d_s = np.stack(np.broadcast_arrays(ci * ca, ci * sa, si), -1).reshape(-1, 3)
    poses = np.broadcast_to(world_from_sensor_cols, (w, 4, 4)) if world_from_sensor_cols.ndim == 2 else world_from_sensor_cols
    org = np.broadcast_to(poses[None, :, :3, 3], (h, w, 3)).reshape(-1, 3)
    # each column's rotation applied to its h beams (broadcast, not copied per ray)
    dirs = pm.matmul(poses[None, :, :3, :3], d_s.reshape(h, w, 3, 1))[..., 0].reshape(-1, 3)
    in_fov = np.broadcast_to(np.abs((azimuths + np.pi) % (2 * np.pi) - np.pi) <= spec.half_fov, (h, w)).ravel()
    boxes, kind, side_kind, owner = scene.boxes(t)
    org_c = org if world_from_sensor_cols.ndim == 3 else poses[0, :3, 3]
    hits = _cast_subset(org_c, dirs, in_fov, boxes, spec.max_range)
    n_agents = len(scene.agents)

    # Vegetation lets some rays through: they report the surface behind it instead.
    k1 = np.where(hits.box1 >= 0, kind[np.maximum(hits.box1, 0)], -1)
    through = (k1 >= 0) & (rng.random(len(dirs)) < KIND_TRANSPARENCY[np.maximum(k1, 0)])
    through_first = through & (rng.random(len(dirs)) < 0.5)  # pass entirely (no return from the leaves)
    t_a = np.where(through_first, hits.t2, hits.t1)
    b_a = np.where(through_first, hits.box2, hits.box1)
    c_a = np.where(through_first, hits.cos2, hits.cos1)
    s_a = np.where(through_first, False, hits.side1)
    second_ok = through & ~through_first
    first = _returns(scene, spec, t_a, b_a, c_a, s_a, org_c, dirs, kind, side_kind, owner, in_fov, ego_pose, rng)
    second = _returns(scene, spec, np.where(second_ok, hits.t2, np.inf), hits.box2, hits.cos2,
                      np.zeros(len(dirs), bool), org_c, dirs, kind, side_kind, owner, in_fov, ego_pose, rng)

    # Visibility: rays whose first surface is the agent vs. rays crossing the agent at all.
    own1 = np.where(hits.box1 >= 0, owner[np.maximum(hits.box1, 0)], -1)
    own2 = np.where(hits.box2 >= 0, owner[np.maximum(hits.box2, 0)], -1)
    vis = np.bincount(own1[own1 >= 0], minlength=n_agents)
    behind = (own2 >= 0) & (own2 != own1)
    total = vis + np.bincount(own2[behind], minlength=n_agents)
    return Scan(first, second, vis[:n_agents], np.maximum(total[:n_agents], vis[:n_agents]))


def _cast_subset(org: np.ndarray, dirs: np.ndarray, active: np.ndarray, boxes: Boxes, max_range: float) -> Hits:
    """Cast only the `active` rays (inside the field of view); the rest hit nothing."""
    if active.all():
        return cast(org, dirs, boxes, max_range)
    idx = np.nonzero(active)[0]
    sub = cast(org[idx] if org.ndim == 2 else org, dirs[idx], boxes, max_range)
    r = len(dirs)
    full = Hits(np.full(r, np.inf), np.full(r, -2, np.int64), np.zeros(r), np.zeros(r, bool),
                np.full(r, np.inf), np.full(r, -2, np.int64), np.zeros(r))
    for name in ("t1", "box1", "cos1", "side1", "t2", "box2", "cos2"):
        getattr(full, name)[idx] = getattr(sub, name)
    return full


def _returns(scene, spec, t, box, cos, side, org, dirs, kind, side_kind, owner, in_fov, ego_pose, rng) -> Returns:
    r = len(dirs)
    valid = np.isfinite(t) & (t >= spec.min_range) & in_fov & (rng.random(r) >= spec.dropout)
    tt = np.where(valid, t, 0.0)
    # The measured range (noisy, float32 as the sensors store it) defines the point.
    noise = np.zeros(r)
    noise[valid] = rng.normal(0.0, spec.range_noise, int(valid.sum()))  # only where there is a return
    rng_noisy = np.where(valid, tt + noise, 0.0).astype(np.float32)
    world = (org if org.ndim == 2 else org[None, :]) + dirs * rng_noisy[:, None].astype(np.float64)
    # Points on the ego's own body (short-range lidars looking down) are not returns.
    iv = np.flatnonzero(valid)  # only returns can be on the ego (and the frame change costs)
    local = pm.matmul(world[iv] - ego_pose[:3, 3], ego_pose[:3, :3])
    on_ego = (local[:, 0] > -1.2) & (local[:, 0] < 4.3) & (np.abs(local[:, 1]) < 1.1) & (local[:, 2] < 2.0)
    valid[iv[on_ego]] = False
    bi = np.maximum(box, 0)
    k = np.where(box >= 0, np.where(side, side_kind[bi], kind[bi]), -1)
    ground = valid & (box == -1)
    if ground.any():
        o = org[ground] if org.ndim == 2 else org[None, :]
        exact = o + dirs[ground] * tt[ground, None]  # label from the true hit, not the noisy point
        k[ground] = scene.world.ground_kind(exact[:, 0], exact[:, 1])
    k = np.where(valid, k, -1)
    inst = np.where(valid & (box >= 0), owner[bi], -1)
    inst = np.where(inst >= 0, scene.agents.instance_id[np.maximum(inst, 0)], 0)
    refl = KIND_REFLECTIVITY[np.maximum(k, 0)]
    # Real returns of one surface spread widely (paint, dirt, wetness, beam): log-normal with median 1,
    # sigma 0.5 gives the real per-class ratio p90 / median of about 1.8 (nuScenes, README "Real data").
    speckle = np.ones(r)
    speckle[valid] = pm.exp(rng.normal(0.0, SPECKLE_SIGMA, int(valid.sum())))  # = rng.lognormal's draws, exp here
    falloff = np.ones(r)
    falloff[valid] = pm.exp(-tt[valid] / 150.0)  # the factor is 0 where there is no return
    factor = np.clip(refl * (0.35 + 0.65 * np.abs(cos)) * falloff * speckle, 0.0, 1.0)
    return Returns(valid, rng_noisy, np.where(valid, factor, 0.0), np.abs(cos), k, inst.astype(np.int64), world)


def ground_height(scene: Scene, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height of the walkable surface: sidewalk tops are a curb higher than the road."""
    return np.where(scene.on_sidewalk(x, y), CURB_H, 0.0)


def nuscenes_labels(kind: np.ndarray) -> np.ndarray:
    """Raw nuScenes lidarseg class of each return's kind."""
    return KIND_TO_NUSCENES[np.maximum(kind, 0)]


def waymo_labels(kind: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Waymo segmentation class of each return (UNDEFINED where no return)."""
    return np.where(valid, KIND_TO_WAYMO_SEG[np.maximum(kind, 0)], 0).astype(np.int32)


def points_in_boxes(points: np.ndarray, center: np.ndarray, size: np.ndarray, yaw: np.ndarray,
                    cell: float = 2.0) -> np.ndarray:
    """Count of points (N, 3) inside each box (K,), boundaries included (the devkit's rule).

    Boxes are (centre, l/w/h, yaw) in the points' frame. Boxes are entered into the
    cells of a 2D hash grid that their bounding squares cover, and each point is
    tested only against the boxes of its cell: O(N + pairs), no loop over boxes.
    """
    k = len(center)
    if k == 0 or len(points) == 0:
        return np.zeros(k, np.int64)
    radius = pm.norm(size[:, :2], axis=1) / 2
    lo = np.floor((center[:, :2] - radius[:, None]) / cell).astype(np.int64)
    hi = np.floor((center[:, :2] + radius[:, None]) / cell).astype(np.int64)
    origin = lo.min(0)
    span = hi.max(0) - origin + 1
    nx_, ny_ = (hi - lo + 1).T
    per = nx_ * ny_
    box_of = np.repeat(np.arange(k), per)
    j = np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per)
    cx = np.repeat(lo[:, 0] - origin[0], per) + j // np.repeat(ny_, per)
    cy = np.repeat(lo[:, 1] - origin[1], per) + j % np.repeat(ny_, per)
    cell_id = cx * span[1] + cy
    order = np.argsort(cell_id, kind="stable")
    cell_id, box_of = cell_id[order], box_of[order]
    ptr = np.searchsorted(cell_id, np.arange(span[0] * span[1] + 1))
    pc = np.floor(points[:, :2] / cell).astype(np.int64) - origin
    inside_grid = (pc >= 0).all(1) & (pc[:, 0] < span[0]) & (pc[:, 1] < span[1])
    pidx = np.nonzero(inside_grid)[0]
    pcell = pc[pidx, 0] * span[1] + pc[pidx, 1]
    counts = ptr[pcell + 1] - ptr[pcell]
    starts = np.cumsum(counts) - counts
    pi = np.repeat(pidx, counts)
    bi = box_of[np.repeat(ptr[pcell], counts) + np.arange(counts.sum()) - np.repeat(starts, counts)]
    rel = points[pi] - center[bi]
    box_sin, box_cos = pm.sincos(yaw)
    c, s = box_cos[bi], box_sin[bi]
    lx = rel[:, 0] * c + rel[:, 1] * s
    ly = -rel[:, 0] * s + rel[:, 1] * c
    inside = (np.abs(lx) <= size[bi, 0] / 2) & (np.abs(ly) <= size[bi, 1] / 2) & (np.abs(rel[:, 2]) <= size[bi, 2] / 2)
    return np.bincount(bi[inside], minlength=k).astype(np.int64)
