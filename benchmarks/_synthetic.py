"""Synthetic inputs for benchmarks and checks run without `make repro` data.

- :func:`synthetic_store`: a tiny converted store on the params.yaml grid (the converter: needs
  zarr and, for nuScenes, the devkit).
- In memory, from the procedural world's LiDAR (``gpicture.synth.world`` / ``sensors``), no store:
  :func:`lidar_frame` (one frame of ``sweeps`` scans, voxelized on any grid, with the world's
  boxes), and the batches the pipeline's own collate functions build from such frames:
  :func:`voxel_batch` (the student), :func:`pretrain_batch` (GPICTURE pre-training, with
  clustered random teacher features), :func:`detection_batch` (CenterPoint). These need only
  torch, numpy and gpicture's model path (no zarr, numcodecs, torch_scatter, spconv,
  MinkowskiEngine, devkit or Waymo protos), so they run on a bare GPU host
  (benchmarks/gpu_check.py) as in tests/test_portable_imports.py. :data:`TINY_GRID` and
  :data:`TINY_MODEL` are a model profile small enough for a CPU test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpicture.data.batch import VoxelBatch, VoxelItem, collate_frames
from gpicture.data.taxonomy import WAYMO_BOX_TYPES
from gpicture.data.voxelize import VoxelGrid
from gpicture.models.detection.model import DetectionBatch
from gpicture.models.pretrain import PretrainBatch
from gpicture.synth.sensors import nuscenes_lidar_top, scan, waymo_lidars
from gpicture.synth.taxonomy import OBJECT_CLASS_INDEX, OBJECT_CLASSES
from gpicture.synth.world import make_scene
from gpicture.tasks.detection.data import DetectionItem, collate_detection
from gpicture.training.pretrain_data import collate_pretrain


def synthetic_store(dataset: str, params: dict, tmp: Path, occupancy: bool = False, frames: int = 4) -> Path:
    """``frames`` frames of one synthetic nuScenes scene (with occupancy files when asked) or
    Waymo segment (segmentation labels on every frame), converted with params' grid."""
    from gpicture.data.convert import ConvertConfig, convert  # lazy: the converter needs zarr (not the builders below)
    from gpicture.synth.generate import SynthConfig, generate_nuscenes, generate_waymo

    conv = params["convert"][dataset]
    grid = VoxelGrid(tuple(conv["point_cloud_range"]), tuple(conv["voxel_size"]))
    if dataset == "nuscenes":
        generate_nuscenes(SynthConfig(scenes=1, frames=frames, sweeps_before=max(conv["sweeps"] - 1, 0), seed=0,
                                      occupancy=occupancy), tmp / "raw")
        cfg = ConvertConfig("nuscenes", tmp / "raw", "mini_train", grid, sweeps=conv["sweeps"])
    else:
        generate_waymo(SynthConfig(scenes=1, frames=frames, seed=0, waymo_label_every=1), tmp / "raw")
        cfg = ConvertConfig("waymo", tmp / "raw", "training", grid)
    convert(cfg, tmp / "train.zarr")
    return tmp / "train.zarr"


# A model profile for CPU tests: the small profile's layout (4 stages x 1 block = 8 supervised
# layers) at d_model 16 on a 0.8 m grid over nuScenes' range (128 x 128 x 10 voxels).
TINY_GRID = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.8, 0.8, 0.8))
TINY_MODEL = {
    "point_features": ["intensity", "time_lag"], "vfe_filters": [16, 16], "d_model": 16, "nhead": 2,
    "dim_feedforward": 32, "set_size": 16, "window_shapes": [[12, 12, 10], [12, 12, 5], [12, 12, 1], [12, 12, 1]],
    "blocks": [1, 1, 1, 1], "z_strides": [[1, 1, 2], [1, 1, 5], [1, 1, 1]], "shift": [6, 6, 0],
    "hybrid_factor": [2, 2, 1],
}
SWEEP_DT = {"nuscenes": 0.05, "waymo": 0.1}  # s between scans: LIDAR_TOP at 20 Hz, Waymo's TOP at 10 Hz


def model_grid(model_params: dict, convert_section: dict | None = None) -> VoxelGrid:
    """The grid a model profile runs on: its own ``voxel_size`` / ``point_cloud_range`` (the full
    profiles name them), else those of the dataset's ``convert`` section of params.yaml."""
    src = model_params if "voxel_size" in model_params else (convert_section or {})
    if "voxel_size" not in src or "point_cloud_range" not in src:
        raise ValueError("model_grid: the model profile names no grid; pass the dataset's convert section")
    return VoxelGrid(tuple(float(v) for v in src["point_cloud_range"]), tuple(float(v) for v in src["voxel_size"]))


def grid_attrs(grid: VoxelGrid) -> dict:
    """The store attributes a model is built from (``StudentConfig.from_params``): voxel size
    (m, x y z), point-cloud range (m) and grid shape (z, y, x)."""
    return {"voxel_size": list(grid.voxel_size), "point_cloud_range": list(grid.point_cloud_range),
            "grid_shape_zyx": list(grid.shape_zyx)}


@dataclass
class SyntheticFrame:
    """One frame of the procedural world with the attributes of a store frame that the
    collate functions read (``collate_frames``, ``collate_pretrain``), and its boxes."""

    index: int
    points: np.ndarray  # (N, 3) float32 m: keyframe LiDAR frame (nuScenes), vehicle frame (Waymo)
    features: dict[str, np.ndarray]  # (N,) float32 each: intensity, time_lag (s), ring, elongation
    voxel_coords: np.ndarray  # (V, 3) int32 z, y, x on the grid
    point_voxel: np.ndarray  # (N,) int32 row of voxel_coords, -1 outside the grid
    boxes: np.ndarray  # (M, 7) float32 x, y, z, l, w, h, yaw (the points' frame; m, rad), centres in range
    box_names: np.ndarray  # (M,) object: the dataset's detection class (nuScenes car, ...; Waymo TYPE_VEHICLE, ...)
    box_velocity: np.ndarray  # (M, 2) float32 vx, vy m/s in the points' frame


def lidar_frame(grid: VoxelGrid, dataset: str = "nuscenes", sweeps: int = 1, seed: int = 0, index: int = 0,
                max_points: int | None = None) -> SyntheticFrame:
    """A frame of ``sweeps`` scans of the world of ``seed``, the newest the keyframe, every
    scan's first returns mapped into the keyframe's frame (nuScenes: LIDAR_TOP, about 32k
    points a scan, so 10 sweeps are a full-size 300k-point frame; Waymo: its TOP lidar, about
    160k points a scan, vehicle frame), voxelized on ``grid``. ``max_points`` keeps a seeded
    random subset (in order). ``time_lag`` is each scan's age (s); ``elongation`` is a
    stand-in (uniform 0..0.3) as the world has no pulse shapes."""
    if dataset not in SWEEP_DT:
        raise ValueError(f"lidar_frame: unknown dataset {dataset!r} (nuscenes or waymo)")
    if sweeps < 1:
        raise ValueError(f"lidar_frame: sweeps must be at least 1, got {sweeps}")
    spec = nuscenes_lidar_top() if dataset == "nuscenes" else waymo_lidars()[0]
    dt = SWEEP_DT[dataset]
    scene = make_scene(seed, duration=(sweeps + 1) * dt)
    rng = np.random.default_rng(seed + 1)
    t_key = (sweeps - 1) * dt
    ego_key = scene.ego_pose(t_key)
    key_from_world = np.linalg.inv(ego_key @ spec.ego_from_sensor if dataset == "nuscenes" else ego_key)
    rot, off = key_from_world[:3, :3], key_from_world[:3, 3]
    az = np.linspace(-np.pi, np.pi, spec.columns, endpoint=False)
    rows = np.repeat(np.arange(len(spec.inclinations))[::-1], spec.columns)  # row 0 is the top beam
    parts: list[tuple[np.ndarray, ...]] = []
    for i in range(sweeps):
        t = t_key - i * dt
        ego = scene.ego_pose(t)
        r = scan(scene, spec, t, ego @ spec.ego_from_sensor, az, rng, ego).first
        v = r.valid
        scale = 255.0 if dataset == "nuscenes" else 1.0  # nuScenes intensity 0..255, Waymo's about 0..1
        parts.append((r.world[v] @ rot.T + off, scale * r.intensity_factor[v], np.full(int(v.sum()), i * dt),
                      rows[v].astype(np.float64)))
    points, intensity, lag, ring = (np.concatenate(c) for c in zip(*parts, strict=True))
    if max_points is not None and len(points) > max_points:
        keep = np.sort(rng.choice(len(points), max_points, replace=False))
        points, intensity, lag, ring = points[keep], intensity[keep], lag[keep], ring[keep]
    features = {"intensity": intensity, "time_lag": lag, "ring": ring,
                "elongation": rng.uniform(0.0, 0.3, len(points))}
    points = points.astype(np.float32)
    coords, point_voxel = grid.voxelize(points)

    obj = scene.objects(t_key)
    centre = obj.center @ rot.T + off
    heading = np.column_stack([np.cos(obj.yaw), np.sin(obj.yaw), np.zeros(len(obj))]) @ rot.T
    velocity = obj.velocity @ rot.T
    lo, hi = np.asarray(grid.point_cloud_range[:3]), np.asarray(grid.point_cloud_range[3:])
    inside = ((centre >= lo) & (centre < hi)).all(1)
    names = obj.class_name if dataset == "nuscenes" else np.array(
        [WAYMO_BOX_TYPES[OBJECT_CLASSES[OBJECT_CLASS_INDEX[n]].waymo_type] for n in obj.class_name], dtype=object)
    boxes = np.column_stack([centre, obj.size, np.arctan2(heading[:, 1], heading[:, 0])])[inside]
    return SyntheticFrame(index=index, points=points,
                          features={k: f.astype(np.float32) for k, f in features.items()},
                          voxel_coords=coords, point_voxel=point_voxel, boxes=boxes.astype(np.float32),
                          box_names=np.asarray(names, dtype=object)[inside],
                          box_velocity=velocity[inside, :2].astype(np.float32))


def voxel_batch(frames: list[SyntheticFrame], feature_names: list[str]) -> VoxelBatch:
    """The frames batched as the student takes them (``collate_frames``, as pre-training's)."""
    return collate_frames(frames, list(feature_names))


def teacher_features(frame: SyntheticFrame, grid: VoxelGrid, dim: int = 64, clusters: int = 8,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stand-in teacher targets, as the teacher cache gives them: (V, dim) float16 unit-norm
    features and (V,) bool valid (about 5% without a target). Voxels fall into ``clusters``
    groups by height band and range (so that I2Mask finds structure), each group a random
    direction plus noise."""
    rng = np.random.default_rng([seed, frame.index])
    centre = (frame.voxel_coords[:, ::-1] + 0.5) * np.asarray(grid.voxel_size) + np.asarray(grid.point_cloud_range[:3])
    band = np.clip((centre[:, 2] + 3.0) // 1.5, 0, 3).astype(np.int64)  # ground, low, mid, high
    far = np.hypot(centre[:, 0], centre[:, 1]) > 20.0
    group = (2 * band + far) % clusters
    directions = rng.standard_normal((clusters, dim))
    feats = directions[group] + 0.5 * rng.standard_normal((len(group), dim))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return feats.astype(np.float16), rng.random(len(group)) >= 0.05


def pretrain_batch(frames: list[SyntheticFrame], feature_names: list[str], grid: VoxelGrid,
                   true_points: int = 64, seed: int = 0) -> PretrainBatch:
    """A pre-training batch (``collate_pretrain``: up to ``true_points`` true points per voxel)
    with the stand-in teacher targets of :func:`teacher_features`."""
    items = [(f, *teacher_features(f, grid, seed=seed)) for f in frames]
    return collate_pretrain(items, list(feature_names), tuple(grid.voxel_size), tuple(grid.point_cloud_range),
                            max_points=true_points)


def detection_batch(frames: list[SyntheticFrame], feature_names: list[str], class_names: list[str]) -> DetectionBatch:
    """A detection batch (``collate_detection``): each frame's boxes of ``class_names`` (the
    detector's flat class list) with their class index; other boxes dropped."""
    index = {n: j for j, n in enumerate(class_names)}
    items = []
    for f in frames:
        labels = np.array([index.get(n, -1) for n in f.box_names], dtype=np.int64)
        keep = labels >= 0
        items.append(DetectionItem(VoxelItem.from_frame(f, list(feature_names)), f.boxes[keep], labels[keep],
                                   np.nan_to_num(f.box_velocity[keep])))
    return collate_detection(items)
