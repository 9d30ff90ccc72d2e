"""Ground-truth sampling (GT-paste) for detection fine-tuning, and the points-in-boxes helper it uses."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from gpicture.data.convert import ConvertConfig, convert
from gpicture.data.spec import NUSCENES
from gpicture.data.store import VoxelStore
from gpicture.data.voxelize import VoxelGrid
from gpicture.ops.points_in_boxes import (
    box_index_of_points,
    points_in_boxes_mask,
    points_in_boxes_pairs,
)
from gpicture.ops.rotated_iou import rotated_iou
from gpicture.synth.generate import SynthConfig, generate_nuscenes
from gpicture.synth.sensors import points_in_boxes
from gpicture.tasks.detection.data import DetectionDataset, DetectionItem
from gpicture.tasks.detection.gt_sampling import (
    GTDatabase,
    GTSamplingConfig,
    paste,
    sample_objects,
)
from gpicture.training.augment import AugmentConfig

FEATURES = ["intensity", "ring", "time_lag"]
TASKS, CMAP = [list(g) for g in NUSCENES.detection_groups], NUSCENES.detection_class_map()
CLASSES = [n for t in TASKS for n in t]
assert CLASSES == NUSCENES.detection_classes
ALL_TEN = {c: 40 for c in CLASSES}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gts")
    generate_nuscenes(
        SynthConfig(scenes=5, frames=3, sweeps_before=1, seed=3, occupancy=False, workers=2), root / "raw"
    )
    grid = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.4, 0.4, 0.4))
    convert(ConvertConfig("nuscenes", root / "raw", "mini_train", grid, sweeps=2), root / "s.zarr")
    return root / "s.zarr"


def _brute_inside(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    rel = points[:, :3].astype(np.float64) - box[:3]
    c, s = np.cos(box[6]), np.sin(box[6])
    u, v = rel[:, 0] * c + rel[:, 1] * s, -rel[:, 0] * s + rel[:, 1] * c
    return (np.abs(u) <= box[3] / 2) & (np.abs(v) <= box[4] / 2) & (np.abs(rel[:, 2]) <= box[5] / 2)


def _frame(store: Path, k: int) -> tuple[np.ndarray, ...]:
    """A frame as DetectionDataset sees it before augmentation."""
    fr = VoxelStore.open(store)[k]
    index = {n: j for j, n in enumerate(CLASSES)}
    det = np.array([index.get(CMAP.get(n, ""), -1) for n in fr.box_names], dtype=np.int64)
    keep = (det >= 0) & (fr.box_num_points > 0)
    feats = np.stack([fr.features[n] for n in FEATURES], 1).astype(np.float32)
    return fr.points, feats, fr.boxes[keep], det[keep], np.nan_to_num(fr.box_velocity[keep])


def _fields(it: DetectionItem) -> dict[str, np.ndarray]:
    """A detection item's arrays by name."""
    v = it.voxels
    return {"points": v.points, "features": v.features, "coords": v.coords, "point_voxel": v.point_voxel,
            "boxes": it.boxes, "labels": it.labels, "velocity": it.velocity}


def _bev_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return rotated_iou(torch.from_numpy(a.astype(np.float64)), torch.from_numpy(b.astype(np.float64))).numpy() > 0


def test_points_in_boxes_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    for trial in range(8):
        n, k = 5000, 40
        pts = np.column_stack([rng.uniform(-25, 25, (n, 2)), rng.uniform(-2, 2, n)]).astype(np.float32)
        boxes = np.column_stack(
            [rng.uniform(-25, 25, (k, 2)), rng.uniform(-1, 1, k), rng.uniform(0.3, 10, (k, 3)), rng.uniform(-4, 4, k)]
        )
        inside = np.stack([_brute_inside(pts, b) for b in boxes], 1)  # (n, k)
        assert inside.any(1).sum() > 100, "the random boxes should hold points"
        pi, bi = points_in_boxes_pairs(pts, boxes, cell=[0.3, 2.0, 7.0][trial % 3])
        want_p, want_b = np.nonzero(inside)  # row-major: sorted by point, then box
        np.testing.assert_array_equal(pi, want_p)
        np.testing.assert_array_equal(bi, want_b)
        np.testing.assert_array_equal(points_in_boxes_mask(pts, boxes), inside.any(1))
        np.testing.assert_array_equal(box_index_of_points(pts, boxes), np.where(inside.any(1), inside.argmax(1), -1))
        counts = points_in_boxes(pts, boxes[:, :3], boxes[:, 3:6], boxes[:, 6])
        np.testing.assert_array_equal(np.bincount(bi, minlength=k), counts)
    assert len(points_in_boxes_pairs(np.zeros((0, 3), np.float32), boxes)[0]) == 0
    np.testing.assert_array_equal(box_index_of_points(pts, np.zeros((0, 7))), np.full(len(pts), -1))


def test_database_holds_only_the_given_frames_and_classes(store) -> None:
    n_frames = len(VoxelStore.open(store))
    assert n_frames == 9
    frames = [0, 2, 5]
    wanted = ["car", "pedestrian", "barrier", "bus"]
    db = GTDatabase.build(store, frames, CLASSES, CMAP, FEATURES, min_points=5, classes=wanted)
    full = GTDatabase.build(store, range(n_frames), CLASSES, CMAP, FEATURES, min_points=5, classes=wanted)
    assert len(db) > 10 and len(full) > len(db)
    assert set(db.frame.tolist()) <= set(frames)
    assert {CLASSES[c] for c in db.labels} <= set(wanted)
    assert db.num_points().min() >= 5
    counts = db.counts_per_class()
    assert sum(counts.values()) == len(db) and counts["truck"] == 0
    assert db.points.dtype == np.float32 and db.features.shape == (len(db.points), len(FEATURES))

    # Exactly the objects a brute-force pass finds, with their points and features row for row.
    st = VoxelStore.open(store)
    expected = 0
    for k in frames:
        fr = st[k]
        feats = np.stack([fr.features[n] for n in FEATURES], 1).astype(np.float32)
        mine = np.flatnonzero(db.frame == k)
        for name, box in zip(fr.box_names, fr.boxes, strict=True):
            if CMAP.get(name) not in wanted:
                continue
            m = _brute_inside(fr.points, box)
            if m.sum() < 5:
                continue
            expected += 1
            hit = mine[np.all(db.boxes[mine] == box, axis=1)]
            assert len(hit) == 1
            rows = db.point_rows(hit)
            np.testing.assert_array_equal(db.points[rows], fr.points[m])
            np.testing.assert_array_equal(db.features[rows], feats[m])
            assert CLASSES[db.labels[hit[0]]] == CMAP[name]
    assert expected == len(db)


def test_paste_invariants(store) -> None:
    db = GTDatabase.build(store, range(len(VoxelStore.open(store))), CLASSES, CMAP, FEATURES, min_points=5)
    cfg = GTSamplingConfig(ALL_TEN, min_points=5)
    pasted_total = 0
    for k, seed in [(0, 0), (1, 1), (4, 2), (7, 3)]:
        pts, feats, boxes, labels, vel = _frame(store, k)
        sel = sample_objects(boxes, labels, db, cfg, np.random.default_rng(seed))
        out = paste(pts, feats, boxes, labels, vel, db, cfg, np.random.default_rng(seed))
        p2, f2, b2, l2, v2 = out
        m, s = len(boxes), len(sel)
        pasted_total += s
        assert len(b2) == len(l2) == len(v2) == m + s and len(p2) == len(f2)
        np.testing.assert_array_equal(b2[:m], boxes)
        np.testing.assert_array_equal(b2[m:], db.boxes[sel])
        np.testing.assert_array_equal(l2[m:], db.labels[sel])
        np.testing.assert_array_equal(v2[m:], db.velocity[sel])
        assert l2.dtype == labels.dtype and p2.dtype == np.float32 and f2.dtype == np.float32
        # No BEV overlap involving a pasted box.
        ov = _bev_overlap(b2, b2)
        np.fill_diagonal(ov, False)
        assert not ov[m:].any() and not ov[:, m:].any()
        # Scene points in pasted boxes removed; the pasted points (and features) follow, inside their boxes.
        inside = np.stack([_brute_inside(pts, b) for b in db.boxes[sel]], 1).any(1) if s else np.zeros(len(pts), bool)
        n_keep = int((~inside).sum())
        assert n_keep < len(pts) or s == 0
        np.testing.assert_array_equal(p2[:n_keep], pts[~inside])
        np.testing.assert_array_equal(f2[:n_keep], feats[~inside])
        rows = db.point_rows(sel)
        np.testing.assert_array_equal(p2[n_keep:], db.points[rows])
        np.testing.assert_array_equal(f2[n_keep:], db.features[rows])
        owner = np.repeat(np.arange(s), db.num_points()[sel])
        for j in range(s):
            assert _brute_inside(p2[n_keep:][owner == j], db.boxes[sel[j]]).all()
        assert not points_in_boxes_mask(p2[:n_keep], db.boxes[sel]).any()
        # Targets are caps: no class ends above max(target, what the frame had).
        for c, name in enumerate(CLASSES):
            assert (l2 == c).sum() <= max(ALL_TEN[name], (labels == c).sum())
    assert pasted_total >= 8


def _toy_db(boxes: np.ndarray, labels: np.ndarray, n_pts: int = 6) -> GTDatabase:
    """Objects with n_pts points each at their box centre, feature = object index."""
    k = len(boxes)
    pts = np.repeat(boxes[:, :3], n_pts, 0).astype(np.float32)
    feats = np.repeat(np.arange(k, dtype=np.float32), n_pts)[:, None]
    return GTDatabase(
        ("car", "pedestrian", "bus"),
        ("f",),
        boxes.astype(np.float32),
        np.zeros((k, 2), np.float32),
        labels.astype(np.int64),
        np.zeros(k, np.int64),
        np.arange(k + 1) * n_pts,
        pts,
        feats,
    )


def _grid_boxes(n: int, x0: float, size: tuple[float, float, float] = (4.0, 2.0, 1.5)) -> np.ndarray:
    """n boxes 10 m apart along y, at x = x0: none overlap."""
    return np.array([[x0, 10.0 * i, 0.0, *size, 0.3] for i in range(n)])


def test_counts_reach_targets_and_collisions_are_rejected() -> None:
    cars, peds = _grid_boxes(10, 0.0), _grid_boxes(3, 30.0, (0.7, 0.7, 1.8))
    db = _toy_db(np.concatenate([cars, peds]), np.array([0] * 10 + [1] * 3))
    assert db.counts_per_class() == {"car": 10, "pedestrian": 3, "bus": 0}
    scene = np.array([[-60.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0], [-60.0, 10.0, 0.0, 4.0, 2.0, 1.5, 0.0]])  # two far cars
    pts = np.random.default_rng(0).uniform(-70, 40, (3000, 3)).astype(np.float32)
    feats = np.full((len(pts), 1), -1.0, np.float32)
    args = (pts, feats, scene.astype(np.float32), np.array([0, 0]), np.zeros((2, 2), np.float32))
    for seed in range(5):
        cfg = GTSamplingConfig({"car": 7, "pedestrian": 5, "bus": 4})
        _, f2, b2, l2, _ = paste(*args, db, cfg, np.random.default_rng(seed))
        assert not np.triu(_bev_overlap(b2, b2), 1).any()
        assert (l2 == 0).sum() == 7 and (l2 == 1).sum() == 3 and (l2 == 2).sum() == 0  # 5 cars pasted, all 3 peds
        assert (f2[:, 0] >= 0).sum() == 8 * 6  # the pasted objects' points, features intact
    # Already at or above the target: nothing of that class.
    sel = sample_objects(
        scene, np.array([0, 0]), db, GTSamplingConfig({"car": 2, "pedestrian": 1}), np.random.default_rng(0)
    )
    assert (db.labels[sel] == 0).sum() == 0 and (db.labels[sel] == 1).sum() == 1
    # A database car on top of a scene car is never pasted; of two overlapping candidates only the first drawn is.
    clash = np.concatenate([cars[:3], [[-60.5, 0.5, 0.0, 4.0, 2.0, 1.5, 1.0]], [[0.5, 0.5, 0.0, 4.0, 2.0, 1.5, 0.0]]])
    db2 = _toy_db(clash, np.zeros(5, np.int64))
    for seed in range(6):
        rng = np.random.default_rng(seed)
        drawn = np.random.default_rng(seed).choice(np.arange(5), size=5, replace=False)
        sel = sample_objects(scene, np.array([0, 0]), db2, GTSamplingConfig({"car": 7}), rng)
        assert 3 not in sel and len(sel) == 3
        first_of_pair = drawn[np.isin(drawn, [0, 4])][0]
        assert first_of_pair in sel and (4 - first_of_pair) not in sel
    with pytest.raises(ValueError, match="unknown class"):
        sample_objects(scene, np.array([0, 0]), db, GTSamplingConfig({"tram": 3}), np.random.default_rng(0))
    with pytest.raises(ValueError, match="non-negative"):
        GTSamplingConfig({"car": -1})


def test_paste_is_deterministic(store) -> None:
    db = GTDatabase.build(store, range(6), CLASSES, CMAP, FEATURES, min_points=5)
    cfg = GTSamplingConfig(ALL_TEN)
    frame = _frame(store, 7)
    a = paste(*frame, db, cfg, np.random.default_rng(11))
    b = paste(*frame, db, cfg, np.random.default_rng(11))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    sels = {tuple(sample_objects(frame[2], frame[3], db, cfg, np.random.default_rng(s))) for s in range(4)}
    assert len(sels) > 1


def test_detection_dataset_with_gt_sampling(store) -> None:
    frames = [0, 1, 3, 6]
    aug = AugmentConfig()
    plain = DetectionDataset(store, FEATURES, CLASSES, CMAP, frames, augment_cfg=aug, seed=5)
    gts = DetectionDataset(
        store, FEATURES, CLASSES, CMAP, frames, augment_cfg=aug, seed=5, gt_sampling=GTSamplingConfig(ALL_TEN)
    )
    assert plain.gt_database is None and gts._gt_db is None  # built on first use
    more = 0
    for i in range(len(frames)):
        a, b = _fields(plain[i]), _fields(gts[i])
        assert len(b["labels"]) >= len(a["labels"])
        more += len(b["labels"]) > len(a["labels"])
        assert len(b["points"]) == len(b["features"]) == len(b["point_voxel"])
        assert len(b["boxes"]) == len(b["labels"]) == len(b["velocity"])
    assert more >= 2
    assert set(gts.gt_database.frame.tolist()) <= set(frames)  # the labelled frames only
    # Pickling (DataLoader workers) ships the database, and the copy gives the same items.
    clone = pickle.loads(pickle.dumps(gts))
    assert clone._gt_db is not None and len(clone._gt_db) == len(gts.gt_database)
    x, y = _fields(gts[2]), _fields(clone[2])
    for key in ("points", "features", "boxes", "labels", "velocity"):
        np.testing.assert_array_equal(x[key], y[key])
    # Off in evaluation, and a zero target leaves the augmented frame exactly as without GT sampling.
    ev = DetectionDataset(store, FEATURES, CLASSES, CMAP, frames, gt_sampling=GTSamplingConfig(ALL_TEN))
    assert ev.gt_database is None
    zero = DetectionDataset(
        store, FEATURES, CLASSES, CMAP, frames, augment_cfg=aug, seed=5, gt_sampling=GTSamplingConfig({"car": 0})
    )
    assert len(zero.gt_database) == 0
    with pytest.raises(ValueError, match="unknown classes"):
        DetectionDataset(
            store, FEATURES, CLASSES, CMAP, frames, augment_cfg=aug, gt_sampling=GTSamplingConfig({"van": 2})
        )
    x, y = _fields(plain[1]), _fields(zero[1])
    for key in ("points", "features", "coords", "point_voxel", "boxes", "labels", "velocity"):
        np.testing.assert_array_equal(x[key], y[key])
