"""Augmentation keeps points and boxes consistent (issue 8, in progress)."""

from __future__ import annotations

import numpy as np

from gpicture.synth.sensors import points_in_boxes
from gpicture.training.augment import AugmentConfig, augment


def test_points_stay_inside_their_boxes() -> None:
    rng = np.random.default_rng(0)
    boxes = np.array([[5.0, 2.0, 0.5, 4.0, 2.0, 1.5, 0.4], [-8.0, -3.0, 0.2, 1.0, 0.8, 1.8, -2.0]], np.float32)
    # points inside each box, in its local frame
    pts = []
    for b in boxes:
        local = rng.uniform(-0.45, 0.45, (200, 3)) * b[3:6]
        c, s = np.cos(b[6]), np.sin(b[6])
        pts.append(np.column_stack([local[:, 0] * c - local[:, 1] * s, local[:, 0] * s + local[:, 1] * c, local[:, 2]]) + b[:3])
    pts = np.concatenate(pts).astype(np.float32)
    vel = np.array([[1.0, 0.5], [0.0, -1.0]], np.float32)
    for seed in range(20):
        p, b, v = augment(pts, boxes, vel, AugmentConfig(), np.random.default_rng(seed))
        counts = points_in_boxes(p.astype(np.float64), b[:, :3], b[:, 3:6], b[:, 6])
        assert counts.tolist() == [200, 200]
        speed = np.linalg.norm(v, axis=1) / np.linalg.norm(vel, axis=1)
        scale = b[0, 3] / boxes[0, 3]
        np.testing.assert_allclose(speed, scale, rtol=1e-5)
        assert (np.abs(b[:, 6]) <= np.pi + 1e-6).all()
