"""Training the stand-in teacher: Seal's objective with the synthetic world as its vision model.

Seal (and SLidR before it) pre-trains a Res16UNet34C (in 1 -> out 64, L2-normalised) by
superpoint-to-superpixel contrastive distillation: the 3D features of the points in a
segment are averaged, the image features of the matching superpixel are averaged, and an
InfoNCE loss (temperature 0.07) pulls each segment's 3D feature to its own superpixel
feature and away from every other segment of the batch. Seal's superpixels come from a
vision foundation model, so segments of one class get similar targets.

Seal's weights cannot be downloaded here and there are no images, so the stand-in keeps
the objective and replaces what the foundation model knows by what the synthetic world
knows exactly (the substitution is written into the checkpoint's metadata):

* segments: each object instance, and each ``stuff_cell`` x ``stuff_cell`` m piece of a stuff
  class (road, sidewalk, vegetation, ...), the size of superpixels on the ground;
* a segment's target: ``normalise(class_embedding[c] + perturbation * noise[segment])`` with a
  fixed random unit vector per evaluation class and a fixed noise vector per instance
  (stable across its frames) or ground piece, so instances of a class stay distinguishable
  (as superpixel features of two cars differ) while a class stays one direction.

Beside it, a point-to-segment term (weight ``point_weight``) classifies the points' own
features (up to ``point_samples`` of them) against the same segment targets: Seal regularises
point features towards their segment's across time; without sequences of images here it acts
within the frame.

Inputs follow the teacher's convention exactly (``gpicture.teacher.voxels``), so the same
weights run unchanged in ``gpicture teacher``. Augmentation as SLidR's cloud transforms:
rotation about z and a flip; each step sees ``crop_deg`` degrees of azimuth of
``frames_per_step`` pool frames, centred on an object of a class drawn uniformly
(``crop_centre: object``) or at random. CPU budget (``benchmarks/bench_teacher_fit.py``, 2 cores):
a step over a 45 degree sector takes 1.1 s, a 90 degree one 1.4 s, a full frame 2.9 s; how far the features get
depends on the number of steps more than on the points per step (closing note of issue 18).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gpicture.compat import import_minkowski
from gpicture.teacher.cache import TeacherConfig
from gpicture.teacher.voxels import input_channel, teacher_voxels
from gpicture.training.teacher_pool import PoolFrame

DIM = 64
NOISE_ROWS = 4096  # segments hash into a fixed table of noise vectors
_HASH = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class FitConfig:
    """Optimisation of the stand-in (params ``teacher.standin``)."""

    steps: int = 300
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.07  # SLidR / Seal NCE_temperature
    perturbation: float = 0.3  # norm of the per-segment noise added to the class embedding
    stuff_cell: float = 4.0  # m, the ground pieces of stuff classes
    crop_deg: float = 180.0  # azimuth sector per frame and step
    frames_per_step: int = 1
    point_weight: float = 1.0  # weight of the point-to-segment term (0: the superpoint-to-superpixel loss only)
    point_samples: int = 4096  # points drawn per step for it (SLidR's num_matches)
    point_sampling: str = "uniform"  # uniform, or balanced: each class present gets an equal share of the samples
    crop_centre: str = "random"  # random azimuth, or object: the sector centred on an object of a class drawn uniformly
    seed: int = 0

    def validate(self) -> None:
        if self.steps < 1 or self.frames_per_step < 1 or not 0 < self.crop_deg <= 360:
            raise ValueError(f"teacher fit needs steps, frames_per_step >= 1 and 0 < crop_deg <= 360, got {self}")
        if self.point_weight < 0 or self.point_samples < 1:
            raise ValueError(f"teacher fit needs point_weight >= 0 and point_samples >= 1, got {self}")
        if self.lr <= 0 or self.temperature <= 0 or self.perturbation < 0 or self.stuff_cell <= 0:
            raise ValueError(f"teacher fit needs lr, temperature, stuff_cell > 0 and perturbation >= 0, got {self}")
        if self.point_sampling not in ("uniform", "balanced") or self.crop_centre not in ("random", "object"):
            raise ValueError("teacher fit: point_sampling is uniform or balanced and crop_centre random or object, "
                             f"got {self.point_sampling!r} and {self.crop_centre!r}")


@dataclass
class FitResult:
    """The trained weights (Seal's layout), the loss per step and the wall time (s)."""

    state_dict: dict[str, torch.Tensor]
    losses: list[float]
    seconds: float


@dataclass(frozen=True)
class Targets:
    """The fixed target space: one unit vector per evaluation class (row 0 unused) and the
    noise table segments hash into."""

    classes: torch.Tensor  # (C + 1, 64)
    noise: torch.Tensor  # (NOISE_ROWS, 64), rows of norm 1

    @classmethod
    def make(cls, n_classes: int, seed: int) -> Targets:
        g = torch.Generator().manual_seed(seed)
        classes = F.normalize(torch.randn(n_classes + 1, DIM, generator=g), dim=1)
        noise = F.normalize(torch.randn(NOISE_ROWS, DIM, generator=g), dim=1)
        return cls(classes, noise)


def segment_keys(points: np.ndarray, labels: np.ndarray, instance: np.ndarray, scene: int,
                 stuff_cell: float) -> np.ndarray:
    """An int64 segment key per point: its object instance (things), or its class and
    ground piece of ``stuff_cell`` m (stuff). Points: sensor frame, before augmentation."""
    cell = np.clip(np.floor(points[:, :2] / stuff_cell).astype(np.int64) + 2048, 0, 4095)
    stuff = (labels.astype(np.int64) << 24) | (cell[:, 0] << 12) | cell[:, 1]
    thing = (np.int64(1) << 40) | (np.int64(scene) << 24) | (instance & 0xFFFFFF)
    return np.where(instance > 0, thing, stuff)


def segment_targets(keys: np.ndarray, classes: np.ndarray, targets: Targets, perturbation: float) -> torch.Tensor:
    """Unit target (S, 64) of each segment: its class embedding plus its fixed noise."""
    row = ((keys.astype(np.uint64) * _HASH) >> np.uint64(52)).astype(np.int64)  # top 12 bits: 0..4095
    t = targets.classes[torch.from_numpy(classes)] + perturbation * targets.noise[torch.from_numpy(row)]
    return F.normalize(t, dim=1)


def augment_sector(points: np.ndarray, labels: np.ndarray, instance: np.ndarray, rng: np.random.Generator,
                   cfg: FitConfig) -> tuple[np.ndarray, np.ndarray]:
    """Rotate about z, maybe flip y; keep an azimuth sector of ``crop_deg``: from a random start, or
    (``crop_centre: object``) centred on a random point of an object class drawn uniformly among
    the frame's object classes, so that rare classes are seen as often as cars. Returns
    (points, mask of kept points)."""
    theta = rng.uniform(-np.pi, np.pi)
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float32)
    if rng.random() < 0.5:
        rot = rot @ np.diag([1.0, -1.0, 1.0]).astype(np.float32)
    pts = points @ rot.T
    if cfg.crop_deg >= 360:
        return pts, np.ones(len(pts), bool)
    az = np.degrees(np.arctan2(pts[:, 1], pts[:, 0]))
    start = rng.uniform(-180.0, 180.0)
    things = np.flatnonzero((instance > 0) & (labels > 0)) if cfg.crop_centre == "object" else np.empty(0, np.int64)
    if len(things):
        cls = rng.choice(np.unique(labels[things]))
        members = things[labels[things] == cls]
        start = az[members[rng.integers(len(members))]] - cfg.crop_deg / 2
    return pts, ((az - start) % 360.0) < cfg.crop_deg


def sample_points(cls: np.ndarray, n: int, rng: np.random.Generator, balanced: bool) -> np.ndarray:
    """Indices of ``n`` labelled points: uniform without replacement (all of them when there are
    fewer), or balanced: with replacement, each class present drawn equally often (probability
    1 / (its count x classes present)), so a rare class weighs as much as the road."""
    if not balanced:
        return np.arange(len(cls)) if n >= len(cls) else rng.choice(len(cls), size=n, replace=False)
    _, inv, counts = np.unique(cls, return_inverse=True, return_counts=True)
    p = 1.0 / counts[inv.ravel()]
    return rng.choice(len(cls), size=n, replace=True, p=p / p.sum())


def _step_batch(frames: list[PoolFrame], picks: np.ndarray, rng: np.random.Generator, tcfg: TeacherConfig,
                cfg: FitConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One step's input: coords (T, 4) int32, features (T, 1), and for the labelled points
    their teacher voxel (P,), segment key (P,) and class (P,)."""
    coords, feats, pv, keys, cls = [], [], [], [], []
    offset = 0
    for b, i in enumerate(picks):
        fr = frames[i]
        pts, keep = augment_sector(fr.points, fr.labels, fr.instance, rng, cfg)
        channel = input_channel(fr.intensity[keep], tcfg.input_scale, tcfg.input_transform)
        tv = teacher_voxels(pts[keep], channel, tcfg.voxel_size, tcfg.coordinates, tcfg.angle_bin_deg)
        coords.append(np.column_stack([np.full(len(tv.coords), b, np.int32), tv.coords]))
        feats.append(tv.features)
        lab = fr.labels[keep]
        ok = lab > 0
        pv.append(tv.point_voxel[ok] + offset)
        keys.append(segment_keys(fr.points[keep][ok], lab[ok], fr.instance[keep][ok], fr.scene, cfg.stuff_cell)
                    ^ (np.int64(b) << 48))  # a segment never spans two frames of a batch
        cls.append(lab[ok])
        offset += len(tv.coords)
    return (np.concatenate(coords), np.concatenate(feats), np.concatenate(pv), np.concatenate(keys),
            np.concatenate(cls))


def infonce(point_features: torch.Tensor, seg: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Superpoint-to-superpixel InfoNCE: mean-pool point features (P, 64) per segment ``seg``
    (P,) in 0..S-1, normalise, and classify each segment against all S targets (S, 64)."""
    s = len(targets)
    pooled = torch.zeros(s, point_features.shape[1], dtype=point_features.dtype).index_add_(0, seg, point_features)
    logits = F.normalize(pooled, dim=1) @ targets.T / temperature
    return F.cross_entropy(logits, torch.arange(s))


def point_to_segment(point_features: torch.Tensor, seg: torch.Tensor, targets: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """Each sampled point's own feature (P, 64) classified against the S segment targets:
    the point-to-segment term (Seal regularises points towards their segment's feature
    across time; here within the frame, against the segment's target)."""
    logits = F.normalize(point_features, dim=1) @ targets.T / temperature
    return F.cross_entropy(logits, seg)


def fit_standin(net: torch.nn.Module, frames: list[PoolFrame], n_classes: int, tcfg: TeacherConfig, cfg: FitConfig,
                progress: Callable[[int, int, float], None] | None = None) -> FitResult:
    """Train ``net`` (a fresh Res16UNet34C) on the pool; returns its weights and loss curve.

    ``progress(step, steps, loss)`` after each step. A non-finite loss stops with an error
    naming the step (a checkpoint is never written from such weights)."""
    me = import_minkowski()
    from gpicture.teacher.res16unet import deterministic_coordinates  # lazy: MinkowskiEngine, as above

    cfg.validate()
    tcfg.validate()
    if not frames:
        raise ValueError("teacher fit: the pool holds no frames")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    targets = Targets.make(n_classes, cfg.seed)
    # fused: one kernel over the 38M parameters (0.023 s a step against 0.088 s for the per-tensor loop)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    net.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        picks = rng.choice(len(frames), size=min(cfg.frames_per_step, len(frames)), replace=False)
        coords, feats, pv, keys, cls = _step_batch(frames, picks, rng, tcfg, cfg)
        uniq, first, seg = np.unique(keys, return_index=True, return_inverse=True)
        c = torch.from_numpy(coords)
        with deterministic_coordinates() as manager:  # kernel maps in one order every run (the backward reuses them)
            x = me.SparseTensor(torch.from_numpy(feats), coordinates=c, coordinate_manager=manager)
            out = net(x).features_at_coordinates(c.float())  # rows in input order
        tgt = segment_targets(uniq, cls[first], targets, cfg.perturbation)
        pf = out[torch.from_numpy(pv)]
        seg_t = torch.from_numpy(seg.ravel())
        loss = infonce(pf, seg_t, tgt, cfg.temperature)
        if cfg.point_weight > 0:
            pick = torch.from_numpy(sample_points(cls, cfg.point_samples, rng, cfg.point_sampling == "balanced"))
            loss = loss + cfg.point_weight * point_to_segment(pf[pick], seg_t[pick], tgt, cfg.temperature)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"teacher fit: non-finite loss at step {step} (pool frames {picks.tolist()})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(step + 1, cfg.steps, losses[-1])
    net.eval()
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise FloatingPointError(f"teacher fit: non-finite weights after training ({', '.join(bad[:4])})")
    return FitResult(state, losses, time.perf_counter() - t0)


def substitution_note(cfg: FitConfig) -> str:
    """The metadata's account of what replaces Seal's vision foundation model."""
    return (f"Stand-in for Seal: superpoint-to-superpixel InfoNCE (T={cfg.temperature}) where the superpixel "
            f"features of the vision foundation model are replaced by one target per segment (object instance, "
            f"or {cfg.stuff_cell} m ground piece of a stuff class): a fixed random unit vector per nuScenes "
            f"lidarseg evaluation class plus a fixed per-segment perturbation of norm {cfg.perturbation}, "
            f"normalised; plus a point-to-segment term (weight {cfg.point_weight}) on {cfg.point_samples} sampled "
            "points. Trained on synthetic pool scenes no pipeline stage uses.")


def fit_config_dict(cfg: FitConfig) -> dict:
    return asdict(cfg)
