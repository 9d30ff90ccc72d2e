"""Training-time augmentation of a frame's points and boxes (before voxelization).

Global flips about the x and y axes, a rotation about z, a uniform scaling and a small
translation, applied identically to points, box centres, sizes, headings and velocities
(the points' frame, metres, radians). Voxelization happens after augmentation, so the
canonical grid always sees the augmented geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    flip_x: bool = True  # mirror y -> -y
    flip_y: bool = True  # mirror x -> -x
    rotation: tuple[float, float] = (-np.pi / 4, np.pi / 4)  # rad
    scale: tuple[float, float] = (0.95, 1.05)
    translation_std: float = 0.2  # m, per axis

    @classmethod
    def from_params(cls, a: dict | None) -> AugmentConfig | None:
        """From a task's ``augment`` params section; null or empty: no augmentation."""
        if not a:
            return None
        return cls(flip_x=bool(a["flip_x"]), flip_y=bool(a["flip_y"]), rotation=tuple(float(x) for x in a["rotation"]),
                   scale=tuple(float(x) for x in a["scale"]), translation_std=float(a["translation_std"]))


def augment(points: np.ndarray, boxes: np.ndarray, velocity: np.ndarray, cfg: AugmentConfig,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return augmented copies of ``points`` (N, 3), ``boxes`` (M, 7) x, y, z, l, w, h, yaw and
    ``velocity`` (M, 2)."""
    p, b, v = points.astype(np.float64).copy(), boxes.astype(np.float64).copy(), velocity.astype(np.float64).copy()
    if cfg.flip_x and rng.random() < 0.5:  # mirror across the x axis
        p[:, 1] *= -1
        b[:, 1] *= -1
        b[:, 6] *= -1
        v[:, 1] *= -1
    if cfg.flip_y and rng.random() < 0.5:  # mirror across the y axis
        p[:, 0] *= -1
        b[:, 0] *= -1
        b[:, 6] = np.pi - b[:, 6]
        v[:, 0] *= -1
    angle = rng.uniform(*cfg.rotation)
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    p[:, :2] = p[:, :2] @ rot.T
    b[:, :2] = b[:, :2] @ rot.T
    v = v @ rot.T
    b[:, 6] += angle
    k = rng.uniform(*cfg.scale)
    p *= k
    b[:, :6] *= k
    v *= k
    t = rng.normal(0.0, cfg.translation_std, 3)
    p += t
    b[:, :3] += t
    b[:, 6] = (b[:, 6] + np.pi) % (2 * np.pi) - np.pi
    return p.astype(np.float32), b.astype(np.float32), v.astype(np.float32)
