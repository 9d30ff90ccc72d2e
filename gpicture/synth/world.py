"""A procedural urban driving scene: the streets of :mod:`gpicture.synth.streets` and
moving and parked agents of the nuScenes detection classes, and the ego's drive.

Agents follow polylines (lanes, turns at the crossing, sidewalks, crosswalks) at their
own speeds, so the scene evolves smoothly over time; each is a few boxes of a *kind*
(taxonomy.KINDS) around its annotation box. Everything is drawn from one ``numpy``
generator: the same seed gives the same scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpicture.synth import portable as pm
from gpicture.synth.raycast import Boxes
from gpicture.synth.records import ObjectStates
from gpicture.synth.streets import (
    CURB_H,
    ROAD_HALF,
    SIDEWALK_OUT,
    StaticWorld,
    polyline,
    static_world,
    turn_path,
)
from gpicture.synth.taxonomy import KIND_INDEX, OBJECT_CLASS_INDEX, OBJECT_CLASSES

K = KIND_INDEX


@dataclass
class Agents:
    """Annotated objects: their classes, shapes (as boxes in the object frame), and paths."""

    instance_id: np.ndarray  # (A,) int64
    cls: np.ndarray  # (A,) int index into OBJECT_CLASSES
    size: np.ndarray  # (A, 3) l, w, h of the annotation box
    speed: np.ndarray  # (A,) m/s along the path (0: parked / standing)
    s0: np.ndarray  # (A,) arc length at t = 0
    rider: np.ndarray  # (A,) bool, cycles with a rider
    path_xy: np.ndarray  # (P, 2) all paths' vertices, concatenated
    path_s: np.ndarray  # (P,) arc length of each vertex within its path
    path_ptr: np.ndarray  # (A + 1,) CSR pointer into path_xy
    part_owner: np.ndarray  # (Q,) agent of each part box
    part_center: np.ndarray  # (Q, 3) part centre in the object frame (box centre at origin)
    part_half: np.ndarray  # (Q, 3)
    part_kind: np.ndarray  # (Q,) int

    def __len__(self) -> int:
        return len(self.cls)


@dataclass
class Scene:
    """A complete procedural scene: static world, agents and the ego trajectory."""

    world: StaticWorld
    agents: Agents
    ego_lane_y: float
    ego_speed: float
    ego_x0: float

    # -- ego ---------------------------------------------------------------------------------
    def ego_pose(self, t: float | np.ndarray) -> np.ndarray:
        """world_from_ego at time(s) t (s): (4, 4), or (T, 4, 4) for an array of times."""
        t = np.asarray(t, dtype=np.float64)
        x = self.ego_x0 + self.ego_speed * t
        # A gentle lateral sway and pitch make the poses non-trivial but plausible.
        y = self.ego_lane_y + 0.15 * pm.sin(0.3 * t)
        yaw = 0.045 * pm.cos(0.3 * t)
        pitch = 0.004 * pm.sin(1.3 * t)
        pose = np.zeros(t.shape + (4, 4))
        (sy, cy), (sp, cp) = pm.sincos(yaw), pm.sincos(pitch)
        pose[..., 0, 0], pose[..., 0, 1], pose[..., 0, 2] = cy * cp, -sy, cy * sp
        pose[..., 1, 0], pose[..., 1, 1], pose[..., 1, 2] = sy * cp, cy, sy * sp
        pose[..., 2, 0], pose[..., 2, 1], pose[..., 2, 2] = -sp, 0.0, cp
        pose[..., 0, 3], pose[..., 1, 3], pose[..., 2, 3] = x, y, 0.0
        pose[..., 3, 3] = 1.0
        return pose

    # -- agents ------------------------------------------------------------------------------
    def agent_poses(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centres (A, 3), yaws (A,) and velocities (A, 3) of all agents at time t."""
        a = self.agents
        n = len(a)
        length = a.path_s[a.path_ptr[1:] - 1]
        s = np.clip(a.s0 + a.speed * t, 0.0, length - 1e-6)
        # Global search: offset each path's arc length by a large per-agent constant.
        big = float(length.max() + 10.0) if n else 1.0
        owner = np.repeat(np.arange(n), np.diff(a.path_ptr))
        key = a.path_s + owner * big
        j = np.searchsorted(key, s + np.arange(n) * big, side="right") - 1
        j = np.clip(j, a.path_ptr[:-1], a.path_ptr[1:] - 2)
        p0, p1 = a.path_xy[j], a.path_xy[j + 1]
        seg = np.maximum(a.path_s[j + 1] - a.path_s[j], 1e-9)
        f = ((s - a.path_s[j]) / seg)[:, None]
        xy = p0 + f * (p1 - p0)
        tangent = (p1 - p0) / seg[:, None]
        yaw = pm.arctan2(tangent[:, 1], tangent[:, 0])
        moving = (a.speed > 0) & (s < length - 1e-3)
        vel = np.zeros((n, 3))
        vel[:, :2] = tangent * np.where(moving, a.speed, 0.0)[:, None]
        z_base = np.where(self.on_sidewalk(xy[:, 0], xy[:, 1]), CURB_H, 0.0)
        centre = np.column_stack([xy, z_base + a.size[:, 2] / 2])
        return centre, yaw, vel

    def on_sidewalk(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        ay, ax = np.abs(y), np.abs(x - self.world.cross_x)
        main = (ay >= ROAD_HALF) & (ay < SIDEWALK_OUT) & (ax >= ROAD_HALF)
        cross = (ax >= ROAD_HALF) & (ax < SIDEWALK_OUT) & (ay >= ROAD_HALF)
        return main | cross

    def objects(self, t: float) -> ObjectStates:
        """Annotation boxes of all agents at time t (num_points/visibility left at 0)."""
        a = self.agents
        centre, yaw, vel = self.agent_poses(t)
        names = np.array([OBJECT_CLASSES[c].name for c in a.cls], dtype=object)
        attr = np.empty(len(a), dtype=object)
        moving = pm.norm(vel, axis=1) > 0.2
        vehicle = np.isin(names, ["car", "truck", "bus", "trailer", "construction_vehicle"])
        cycle = np.isin(names, ["motorcycle", "bicycle"])
        ped = names == "pedestrian"
        attr[:] = ""
        parked = a.speed == 0
        attr[vehicle] = np.where(moving[vehicle], "vehicle.moving", np.where(parked[vehicle], "vehicle.parked", "vehicle.stopped"))
        attr[cycle] = np.where(a.rider[cycle], "cycle.with_rider", "cycle.without_rider")
        attr[ped] = np.where(moving[ped], "pedestrian.moving", "pedestrian.standing")
        k = len(a)
        return ObjectStates(
            instance_id=a.instance_id.copy(),
            class_name=names,
            center=centre,
            size=a.size.copy(),
            yaw=yaw,
            velocity=vel,
            attribute=attr,
            num_points=np.zeros(k, np.int64),
            visibility=np.zeros(k, np.int64),
        )

    def boxes(self, t: float) -> tuple[Boxes, np.ndarray, np.ndarray, np.ndarray]:
        """All boxes at time t: (boxes, kind, side kind, owning agent or -1)."""
        a = self.agents
        centre, yaw, _ = self.agent_poses(t)
        o = a.part_owner
        s, c = pm.sincos(yaw[o])
        pc = a.part_center
        world_c = centre[o] + np.column_stack([pc[:, 0] * c - pc[:, 1] * s, pc[:, 0] * s + pc[:, 1] * c, pc[:, 2]])
        w = self.world
        boxes = Boxes(
            center=np.concatenate([w.boxes.center, world_c]),
            half=np.concatenate([w.boxes.half, a.part_half]),
            yaw=np.concatenate([w.boxes.yaw, yaw[o]]),
        )
        kind = np.concatenate([w.kind, a.part_kind])
        side = np.concatenate([w.side_kind, a.part_kind])
        owner = np.concatenate([np.full(len(w.kind), -1), o])
        return boxes, kind, side, owner


# ---------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------


def _draw_size(rng: np.random.Generator, cls: int) -> np.ndarray:
    c = OBJECT_CLASSES[cls]
    lo = np.array(c.size_mean) * 0.7
    return np.maximum(rng.normal(c.size_mean, c.size_std), lo)


def _parts(cls_name: str, size: np.ndarray, rider: bool) -> list[tuple[tuple[float, float, float], tuple[float, float, float], str]]:
    """The boxes that make up an object, in its frame (annotation box centred at the origin)."""
    l, w, h = size
    if cls_name == "car":
        body_h = 0.55 * h - 0.25
        return [((0, 0, -h / 2 + 0.25 + body_h / 2), (l / 2, w / 2, body_h / 2), "car"),
                ((-0.08 * l, 0, -h / 2 + 0.25 + body_h + (h - 0.25 - body_h) / 2), (0.27 * l, 0.46 * w, (h - 0.25 - body_h) / 2), "car")]
    if cls_name == "truck":
        cab = 0.25 * l
        return [((l / 2 - cab / 2, 0, -0.05 * h), (cab / 2, w / 2, 0.45 * h), "truck"),
                ((-cab / 2, 0, 0.05 * h), ((l - cab) / 2 - 0.1, w / 2, 0.45 * h), "truck")]
    if cls_name in ("bus", "trailer"):
        return [((0, 0, 0.05 * h), (l / 2, w / 2, 0.45 * h), cls_name)]
    if cls_name == "construction_vehicle":
        return [((0.1 * l, 0, -0.2 * h), (0.4 * l, w / 2, 0.3 * h), "construction_vehicle"),
                ((-0.25 * l, 0, 0.25 * h), (0.2 * l, 0.4 * w, 0.25 * h), "construction_vehicle"),
                ((0.35 * l, 0, 0.2 * h), (0.15 * l, 0.1 * w, 0.3 * h), "construction_vehicle")]
    if cls_name == "pedestrian":
        return [((0, 0, -0.2 * h), (0.3 * l, 0.35 * w, 0.3 * h), "pedestrian"),
                ((0, 0, 0.25 * h), (0.45 * l, 0.5 * w, 0.25 * h), "pedestrian")]
    if cls_name in ("bicycle", "motorcycle"):
        frame_h = 0.6 * h if rider else h
        parts = [((0, 0, -h / 2 + frame_h / 2), (l / 2, 0.25 * w, frame_h / 2), cls_name)]
        if rider:
            parts.append(((-0.1 * l, 0, -h / 2 + frame_h + 0.2 * h), (0.2 * l, 0.45 * w, 0.2 * h),
                          "bicyclist" if cls_name == "bicycle" else "motorcyclist"))
        return parts
    if cls_name == "traffic_cone":
        return [((0, 0, -0.35 * h), (l / 2, w / 2, 0.15 * h), "traffic_cone"),
                ((0, 0, 0.15 * h), (0.25 * l, 0.25 * w, 0.35 * h), "traffic_cone")]
    if cls_name == "barrier":
        return [((0, 0, 0), (l / 2, w / 2, h / 2), "barrier")]
    raise ValueError(f"unknown object class {cls_name!r}")


def make_scene(seed: int, duration: float, ego_speed: float | None = None, density: float = 1.0) -> Scene:
    """Draw a scene for a drive of ``duration`` seconds (deterministic for ``seed``).

    ``density`` scales the number of agents (1.0 is a busy city street, like nuScenes).
    """
    rng = np.random.default_rng(seed)
    v_ego = float(rng.uniform(5.0, 9.0)) if ego_speed is None else float(ego_speed)
    ego_x0 = 0.0
    travel = v_ego * duration
    cross_x = float(ego_x0 + 72.0 + rng.uniform(0.0, 0.5) * max(travel - 40.0, 0.0))  # beyond the showcase
    margin = 110.0
    x_min, x_max = ego_x0 - margin, ego_x0 + travel + margin
    world = static_world(rng, x_min, x_max, cross_x)

    classes, paths, speeds, s0s, riders = [], [], [], [], []

    def add(cls_name: str, path: np.ndarray, speed: float, s0: float = 0.0, rider: bool = False) -> None:
        classes.append(OBJECT_CLASS_INDEX[cls_name])
        paths.append(path)
        speeds.append(speed)
        s0s.append(s0)
        riders.append(rider)

    span = x_max - x_min
    dens = density * span / 200.0
    # Moving traffic in the four lanes, some turning at the crossing.
    vehicle_mix = ["car"] * 10 + ["truck"] * 2 + ["bus"] + ["motorcycle"] + ["construction_vehicle"] * 0
    for lane_y, heading in ((-5.25, 0.0), (-1.75, 0.0), (1.75, np.pi), (5.25, np.pi)):
        n = rng.poisson(5 * dens)
        for _ in range(n):
            cls_name = str(rng.choice(vehicle_mix))
            x0 = rng.uniform(x_min, x_max)
            turn = int(rng.choice([0, 0, 0, 1, -1]))
            start = (x0, lane_y)
            before = (cross_x - x0) * float(pm.cos(heading)) - (ROAD_HALF + 2 if turn else 0)
            if turn and before <= 0:
                turn, before = 0, 0.0
            turn_r = (ROAD_HALF + 2 + abs(lane_y)) if turn == 1 else (ROAD_HALF + 2 - abs(lane_y))
            path = turn_path(start, heading, turn, turn_r, max(before, 0.0) if turn else span, span)
            speed = float(rng.uniform(4, 12)) if cls_name != "bus" else float(rng.uniform(4, 8))
            add(cls_name, path, speed, rider=cls_name == "motorcycle")
            if cls_name == "truck" and rng.random() < 0.35:  # a trailer following its truck
                add("trailer", path, speed, s0=0.0, rider=False)
                s0s[-2] = 9.5  # the truck leads
    # Parked cars and trucks along the curbs; bicycles racked on the sidewalk.
    for sgn in (-1, 1):
        n = rng.poisson(6 * dens)
        xs = np.sort(rng.uniform(x_min, x_max, n))
        heading = 0.0 if sgn < 0 else np.pi
        for x in xs:
            if abs(x - cross_x) < SIDEWALK_OUT + 4:
                continue
            cls_name = "car" if rng.random() < 0.85 else "truck"
            y = sgn * (ROAD_HALF - 1.15)
            add(cls_name, polyline([(x, y), (x + float(pm.cos(heading)), y)]), 0.0)
        n = rng.poisson(2 * dens)
        for x in rng.uniform(x_min, x_max, n):
            if abs(x - cross_x) < SIDEWALK_OUT + 2:
                continue
            y = sgn * (SIDEWALK_OUT - 2.0)
            add("bicycle" if rng.random() < 0.7 else "motorcycle", polyline([(x, y), (x, y + 1.0)]), 0.0)
    # Cyclists at the right edge of the outer lanes.
    for lane_y, heading in ((-6.2, 0.0), (6.2, np.pi)):
        for _ in range(rng.poisson(1.5 * dens)):
            x0 = rng.uniform(x_min, x_max)
            add("bicycle", turn_path((x0, lane_y), heading, 0, 1.0, span, span), float(rng.uniform(3, 6)), rider=True)
    # Pedestrians walking on the sidewalks, standing, and crossing at the junction.
    for sgn in (-1, 1):
        for _ in range(rng.poisson(8 * dens)):
            x0 = rng.uniform(x_min, x_max)
            y = sgn * rng.uniform(ROAD_HALF + 0.8, SIDEWALK_OUT - 0.5)
            heading = float(rng.choice([0.0, np.pi]))
            moving = rng.random() < 0.75
            path = turn_path((x0, y), heading, 0, 1.0, span, span)
            add("pedestrian", path, float(rng.uniform(0.9, 1.7)) if moving else 0.0)
    for _ in range(rng.poisson(3 * density)):
        x = cross_x + rng.choice([-1, 1]) * rng.uniform(ROAD_HALF + 1, ROAD_HALF + 3)
        sgn = rng.choice([-1, 1])
        y0 = sgn * rng.uniform(SIDEWALK_OUT + 2, SIDEWALK_OUT + 12)
        add("pedestrian", polyline([(x, y0), (x, -y0)]), float(rng.uniform(0.9, 1.6)))
    # A construction zone: a work vehicle, cones and barriers closing part of an outer lane.
    zx = float(rng.uniform(ego_x0 + 10, x_max - 40))
    zs = float(rng.choice([-1, 1]))
    if abs(zx - cross_x) < 25:
        zx = cross_x + 30
    add("construction_vehicle", polyline([(zx + 6, zs * 5.4), (zx + 7, zs * 5.4)]), 0.0)
    for i in range(int(rng.integers(5, 10))):
        x = zx - 4 + i * 2.5
        add("traffic_cone", polyline([(x, zs * 3.6), (x + 1, zs * 3.6)]), 0.0)
    for i in range(int(rng.integers(3, 6))):
        x = zx - 2 + i * 2.8
        add("barrier", polyline([(x, zs * 6.7), (x + 1, zs * 6.7)]), 0.0)
    # Cones and barriers scattered near the curbs elsewhere.
    for _ in range(rng.poisson(2 * dens)):
        x = rng.uniform(x_min, x_max)
        y = rng.choice([-1, 1]) * (ROAD_HALF - 0.4)
        add(str(rng.choice(["traffic_cone", "barrier"])), polyline([(x, y), (x + 1, y)]), 0.0)

    # One of every class just ahead of the ego, spread so none hides another, so every
    # scene (and so every split) has all ten. Random parked agents keep clear of them.
    showcase = (("traffic_cone", 10, -(ROAD_HALF - 0.4), 0.0), ("barrier", 13, ROAD_HALF - 0.4, np.pi / 2),
                ("pedestrian", 16, -8.2, 0.0), ("bicycle", 19, 8.6, np.pi / 2), ("motorcycle", 22, -8.6, np.pi / 2),
                ("car", 26, 5.85, np.pi), ("truck", 31, -5.7, 0.0), ("construction_vehicle", 34, 5.6, np.pi),
                ("bus", 42, -5.75, 0.0), ("trailer", 46, 5.7, np.pi))
    clear_lo, clear_hi = ego_x0 + 6, ego_x0 + 54
    keep = [not (speeds[i] == 0 and clear_lo < paths[i][0, 0] < clear_hi) for i in range(len(classes))]
    classes, paths, speeds, s0s, riders = ([v for v, k in zip(lst, keep, strict=True) if k]
                                           for lst in (classes, paths, speeds, s0s, riders))
    for cls_name, dx, y, heading in showcase:
        x = ego_x0 + dx
        add(cls_name, polyline([(x, y), (x + float(pm.cos(heading)), y + float(pm.sin(heading)))]), 0.0)

    sizes = np.array([_draw_size(rng, c) for c in classes]).reshape(-1, 3)
    a_parts: list[tuple[int, tuple, tuple, str]] = []
    for i, (c, sz, rd) in enumerate(zip(classes, sizes, riders, strict=True)):
        name = OBJECT_CLASSES[c].name
        if rd:
            sz[2] = sz[2] + 0.45  # the box includes the rider
        for centre, half, kind in _parts(name, sz, rd):
            a_parts.append((i, centre, half, kind))
    ptr = np.concatenate([[0], np.cumsum([len(p) for p in paths])]).astype(np.int64)
    path_xy = np.concatenate(paths) if paths else np.zeros((0, 2))
    seg = [np.concatenate([[0.0], np.cumsum(pm.norm(np.diff(p, axis=0), axis=1))]) for p in paths]
    path_s = np.concatenate(seg) if seg else np.zeros(0)
    agents = Agents(
        instance_id=np.arange(len(classes), dtype=np.int64) + 1,
        cls=np.asarray(classes, dtype=np.int64),
        size=sizes,
        speed=np.asarray(speeds, dtype=np.float64),
        s0=np.asarray(s0s, dtype=np.float64),
        rider=np.asarray(riders, dtype=bool),
        path_xy=path_xy,
        path_s=path_s,
        path_ptr=ptr,
        part_owner=np.array([p[0] for p in a_parts], dtype=np.int64),
        part_center=np.array([p[1] for p in a_parts], dtype=np.float64).reshape(-1, 3),
        part_half=np.array([p[2] for p in a_parts], dtype=np.float64).reshape(-1, 3),
        part_kind=np.array([K[p[3]] for p in a_parts], dtype=np.int64),
    )
    scene = Scene(world=world, agents=agents, ego_lane_y=-1.75, ego_speed=v_ego, ego_x0=ego_x0)
    return _drop_ego_conflicts(scene, duration)


def _drop_ego_conflicts(scene: Scene, duration: float) -> Scene:
    """Remove agents that would overlap the ego's own footprint during the drive."""
    a = scene.agents
    keep = np.ones(len(a), dtype=bool)
    for t in np.linspace(0.0, duration, max(int(duration * 4), 2)):
        centre, _, _ = scene.agent_poses(float(t))
        ego = scene.ego_pose(float(t))
        d = centre[:, :2] - ego[:2, 3]
        keep &= ~((np.abs(d[:, 0] - 1.4) < (a.size[:, 0] / 2 + 4.0)) & (np.abs(d[:, 1]) < (a.size[:, 1] / 2 + 1.6)))
    idx = np.nonzero(keep)[0]
    remap = np.full(len(a), -1)
    remap[idx] = np.arange(len(idx))
    part_keep = keep[a.part_owner]
    lens = np.diff(a.path_ptr)[idx]
    rows = np.concatenate([np.arange(a.path_ptr[i], a.path_ptr[i + 1]) for i in idx]) if len(idx) else np.zeros(0, np.int64)
    scene.agents = Agents(
        instance_id=a.instance_id[idx],
        cls=a.cls[idx],
        size=a.size[idx],
        speed=a.speed[idx],
        s0=a.s0[idx],
        rider=a.rider[idx],
        path_xy=a.path_xy[rows],
        path_s=a.path_s[rows],
        path_ptr=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
        part_owner=remap[a.part_owner[part_keep]],
        part_center=a.part_center[part_keep],
        part_half=a.part_half[part_keep],
        part_kind=a.part_kind[part_keep],
    )
    return scene
