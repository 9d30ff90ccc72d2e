"""The ray caster and the world's kinematics, against brute force and finite differences."""

from __future__ import annotations

import numpy as np

from gpicture.synth.raycast import Boxes, cast
from gpicture.synth.sensors import points_in_boxes
from gpicture.synth.world import make_scene


def _brute_force(origins: np.ndarray, dirs: np.ndarray, boxes: Boxes, max_range: float) -> np.ndarray:
    """Nearest hit distance per ray: every ray against every box, plus the ground."""
    best = np.full(len(dirs), np.inf)
    for i in range(len(boxes)):  # the reference may loop; the implementation may not
        c, s = np.cos(boxes.yaw[i]), np.sin(boxes.yaw[i])
        o = origins - boxes.center[i]
        lo = np.stack([o[:, 0] * c + o[:, 1] * s, -o[:, 0] * s + o[:, 1] * c, o[:, 2]], 1)
        ld = np.stack([dirs[:, 0] * c + dirs[:, 1] * s, -dirs[:, 0] * s + dirs[:, 1] * c, dirs[:, 2]], 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-boxes.half[i] - lo) / ld
            t2 = (boxes.half[i] - lo) / ld
        tn = np.nanmax(np.minimum(t1, t2), 1)
        tf = np.nanmin(np.maximum(t1, t2), 1)
        ok = (tf >= tn) & (tn > 1e-6) & (tn <= max_range)
        best = np.where(ok, np.minimum(best, tn), best)
    with np.errstate(divide="ignore", invalid="ignore"):
        tg = np.where(dirs[:, 2] < -1e-9, -origins[:, 2] / dirs[:, 2], np.inf)
    return np.minimum(best, np.where(tg <= max_range, tg, np.inf))


def test_cast_equals_brute_force_with_moving_origins() -> None:
    rng = np.random.default_rng(0)
    m = 150
    boxes = Boxes(
        center=np.column_stack([rng.uniform(-40, 40, (m, 2)), rng.uniform(0.2, 4, m)]),
        half=rng.uniform(0.1, 5, (m, 3)),
        yaw=rng.uniform(-np.pi, np.pi, m),
    )
    r = 20_000
    d = rng.normal(size=(r, 3))
    d[:, 2] = np.abs(d[:, 2]) * -0.3 + 0.1 * rng.normal(size=r)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    origins = np.array([0.0, 0.0, 1.8]) + rng.uniform(-0.6, 0.6, (r, 3)) * [1, 1, 0.1]  # rolling shutter
    hits = cast(origins, d, boxes, max_range=60.0)
    want = _brute_force(origins, d, boxes, 60.0)
    assert np.isfinite(want).mean() > 0.5
    np.testing.assert_allclose(hits.t1, want, rtol=1e-9, atol=1e-9)
    assert (hits.t2[np.isfinite(hits.t2)] >= hits.t1[np.isfinite(hits.t2)]).all()


def test_agents_move_with_their_velocities() -> None:
    scene = make_scene(4, 10.0)
    a0, a1 = scene.objects(2.0), scene.objects(2.1)
    moving = np.linalg.norm(a0.velocity, axis=1) > 0.5
    assert moving.sum() >= 5 and (~moving).sum() >= 10
    step = (a1.center - a0.center) / 0.1
    np.testing.assert_allclose(step[moving, :2], a0.velocity[moving, :2], atol=0.6)  # turns bend the path
    assert set(a0.class_name) >= {"car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian",
                                  "motorcycle", "bicycle", "traffic_cone", "barrier"}


def test_points_in_boxes_matches_direct_test() -> None:
    rng = np.random.default_rng(1)
    pts = rng.uniform(-20, 20, (5000, 3))
    centre = rng.uniform(-15, 15, (30, 3))
    size = rng.uniform(0.5, 8, (30, 3))
    yaw = rng.uniform(-np.pi, np.pi, 30)
    got = points_in_boxes(pts, centre, size, yaw)
    rel = pts[:, None] - centre[None]
    c, s = np.cos(yaw), np.sin(yaw)
    lx = rel[..., 0] * c + rel[..., 1] * s
    ly = -rel[..., 0] * s + rel[..., 1] * c
    inside = (np.abs(lx) <= size[:, 0] / 2) & (np.abs(ly) <= size[:, 1] / 2) & (np.abs(rel[..., 2]) <= size[:, 2] / 2)
    np.testing.assert_array_equal(got, inside.sum(0))
    assert got.sum() > 100
