"""Semantic occupancy: ground truth on the run's grid, the BEV occupancy head, fine-tuning, and
the nuScenes-Occupancy-format predictions with their mIoU / geometric IoU."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gpicture.data.convert import ConvertConfig, convert
from gpicture.data.occupancy_targets import (
    OPENOCCUPANCY_GRID,
    OccupancyGridSpec,
    dense_target,
    downsample_rows,
    frame_ground_truth,
    frames_with_ground_truth,
    point_rows,
)
from gpicture.data.spec import NUSCENES, WAYMO, dataset_spec
from gpicture.data.spec import OCCUPANCY_IGNORE as IGNORE
from gpicture.data.store import VoxelStore
from gpicture.data.voxelize import VoxelGrid
from gpicture.eval.occupancy import (
    META,
    frame_confusion,
    metrics_from_confusion,
    predictions_folder,
    read_rows,
    score_occupancy,
    waymo_file_name,
    write_occupancy,
)
from gpicture.eval.occupancy import write_prediction_folder as _write_prediction_folder
from gpicture.models.occupancy import Occupier
from gpicture.synth.generate import SynthConfig, generate_nuscenes, generate_waymo
from gpicture.tasks.occupancy import (
    OccupancyDataset,
    OccupancyHead,
    OccupancyItem,
    OccupancyConfig,
    OccupancyTask,
    collate_occupancy,
)
from gpicture.training.engine import DistInfo, TrainConfig
from gpicture.training.finetune import FinetuneRun, finetune, load_model, predict

REPO = Path(__file__).resolve().parent.parent
TINY = {"d_model": 32, "vfe_filters": [32, 32], "dim_feedforward": 48, "set_size": 24}
GRIDS = {"nuscenes": {"point_cloud_range": [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0], "voxel_size": 0.8},
         "waymo": {"point_cloud_range": [-51.2, -51.2, -2.0, 51.2, 51.2, 4.4], "voxel_size": 0.8}}
STORES = {"nuscenes": ("mini_train", "mini_val"), "waymo": ("training", "validation")}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("occ")
    generate_nuscenes(SynthConfig(scenes=3, frames=2, sweeps_before=1, seed=8, occupancy=True, workers=2),
                      root / "raw" / "nuscenes")
    generate_waymo(SynthConfig(scenes=2, frames=2, seed=3, workers=2), root / "raw" / "waymo")
    nus = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.4, 0.4, 0.4))
    way = VoxelGrid((-74.88, -74.88, -2.0, 74.88, 74.88, 4.0), (0.64, 0.64, 0.375))
    for split in STORES["nuscenes"]:
        convert(ConvertConfig("nuscenes", root / "raw" / "nuscenes", split, nus, sweeps=1),
                root / "nuscenes" / f"{split}.zarr")
    for split in STORES["waymo"]:
        convert(ConvertConfig("waymo", root / "raw" / "waymo", split, way), root / "waymo" / f"{split}.zarr")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    models = {d: {**params["model"]["profiles"]["small"][d], **TINY} for d in ("nuscenes", "waymo")}
    return {"root": root, "models": models}


def _store(world: dict, dataset: str, split: int) -> Path:
    return world["root"] / dataset / f"{STORES[dataset][split]}.zarr"


def _settings(dataset: str, **kw) -> OccupancyConfig:
    return OccupancyTask().settings({"grid": GRIDS, "augment": {"flip_x": True, "flip_y": True}, **kw},
                                    dataset_spec(dataset))


def score_predictions(dataset: str, folder: Path, store: Path, report_dir: Path,
                      grid: OccupancyGridSpec | None = None) -> dict:
    return score_occupancy(dataset_spec(dataset), folder, store, report_dir, grid=grid)


def write_prediction_folder(out: Path, dataset: str, *args) -> None:
    _write_prediction_folder(out, dataset_spec(dataset), *args)


# ----------------------------------------------------------------------------------------------
# Ground truth on the run's grid
# ----------------------------------------------------------------------------------------------


def test_grid_spec_shapes_and_refusals() -> None:
    g = OccupancyGridSpec.from_params(GRIDS["nuscenes"])
    assert g.shape_zyx == (10, 128, 128)
    assert OPENOCCUPANCY_GRID.shape_zyx == (40, 512, 512)
    assert g.factor_from(OPENOCCUPANCY_GRID) == (4, 4, 4)
    with pytest.raises(ValueError, match="does not divide"):
        OccupancyGridSpec.from_params({"point_cloud_range": [0, 0, 0, 1, 1, 1], "voxel_size": 0.3})
    with pytest.raises(ValueError, match="integer multiple"):
        OccupancyGridSpec.from_params({**GRIDS["nuscenes"], "voxel_size": 0.32}).factor_from(OPENOCCUPANCY_GRID)
    with pytest.raises(ValueError, match="differs"):
        OccupancyGridSpec.from_params(GRIDS["waymo"]).factor_from(OPENOCCUPANCY_GRID)


def test_downsampling_matches_a_brute_force_majority_vote() -> None:
    rng = np.random.default_rng(0)
    fine = OccupancyGridSpec((-1.6, -1.6, -0.8, 1.6, 1.6, 0.8), (0.2, 0.2, 0.2))  # 16 x 16 x 8
    coarse = OccupancyGridSpec((-1.6, -1.6, -0.8, 1.6, 1.6, 0.8), (0.8, 0.8, 0.4))  # factors z 2, y 4, x 4
    nz, ny, nx = fine.shape_zyx
    flat = rng.choice(nz * ny * nx, 150, replace=False)  # ~2 per coarse cell
    z, rem = np.divmod(flat, ny * nx)
    y, x = np.divmod(rem, nx)
    labels = rng.integers(0, 5, len(flat))  # 0 = noise, 1..4 classes: plenty of ties and noise-only cells
    rows = np.column_stack([z, y, x, labels]).astype(np.int16)
    got = downsample_rows(rows, fine, coarse)
    votes: dict[tuple[int, int, int], Counter] = {}
    for (zz, yy, xx, lab) in rows.tolist():
        votes.setdefault((zz // 2, yy // 4, xx // 4), Counter())[lab] += 1
    expected = {}
    for cell, c in votes.items():
        real = {k: v for k, v in c.items() if k > 0}
        expected[cell] = IGNORE if not real else min(real, key=lambda k: (-real[k], k))
    assert {tuple(r[:3]): r[3] for r in got.tolist()} == expected
    assert len(got) == len(expected) and got.dtype == np.int16
    assert (got[:, 3] == IGNORE).any() and len(set(got[:, 3].tolist())) > 2  # the case exercised both rules


def test_downsampling_refuses_rows_of_another_grid() -> None:
    coarse = OccupancyGridSpec.from_params(GRIDS["nuscenes"])
    with pytest.raises(ValueError, match="outside"):
        downsample_rows(np.array([[40, 0, 0, 1]]), OPENOCCUPANCY_GRID, coarse)
    with pytest.raises(ValueError, match=r"\(K, 4\)"):
        downsample_rows(np.zeros((3, 3)), OPENOCCUPANCY_GRID, coarse)


def test_point_rows_take_the_majority_label_and_ignore_undefined() -> None:
    grid = OccupancyGridSpec((0, 0, 0, 2, 2, 2), (1, 1, 1))
    pts = np.array([[0.1, 0.1, 0.1], [0.2, 0.2, 0.2], [0.3, 0.3, 0.3],  # voxel (0,0,0): 3, 3, 5 -> 3
                    [1.5, 0.5, 0.5], [1.6, 0.5, 0.5],  # voxel x=1: undefined only -> IGNORE
                    [0.5, 1.5, 1.5],  # unlabelled (255): dropped
                    [5.0, 0.5, 0.5]], dtype=np.float32)  # outside the grid
    labels = np.array([3, 3, 5, 0, 0, 255, 7], dtype=np.uint8)
    rows = point_rows(pts, labels, grid)
    assert rows.tolist() == [[0, 0, 0, 3], [0, 0, 1, IGNORE]]


def test_store_ground_truth_frames_and_rows(world) -> None:
    nus = VoxelStore.open(_store(world, "nuscenes", 1))
    assert frames_with_ground_truth(nus) == list(range(len(nus)))
    g = OccupancyGridSpec.from_params(GRIDS["nuscenes"])
    rows = frame_ground_truth(nus[0], NUSCENES, g)
    fine = nus[0].occupancy
    assert len(rows) > 0 and set(rows[:, 3].tolist()) <= set(range(1, 17)) | {IGNORE}
    # every coarse row has a fine row inside it, and every fine row falls in a coarse row
    assert set(map(tuple, (fine[:, :3] // 4).tolist())) == set(map(tuple, rows[:, :3].tolist()))
    way = VoxelStore.open(_store(world, "waymo", 0))
    labelled = frames_with_ground_truth(way)
    assert labelled and all(way[i].seg_labels is not None and (way[i].seg_labels != 255).any() for i in labelled)
    assert all(not (way[i].seg_labels != 255).any() for i in set(range(len(way))) - set(labelled))
    assert len(labelled) < len(way)  # label_every = 5: the second frame of each segment has none


def test_flips_move_the_target_with_the_points(world) -> None:
    store = _store(world, "waymo", 0)
    s = _settings("waymo")
    assert s.flip_x and s.flip_y and s.head.grid == OccupancyGridSpec.from_params(GRIDS["waymo"])
    plain = OccupancyDataset(store, world["models"]["waymo"]["point_features"], s.head.grid)
    flipped = OccupancyDataset(store, world["models"]["waymo"]["point_features"], s.head.grid, augment=True,
                               flip_x=True, flip_y=True)
    seen = set()
    for epoch in range(8):  # until both flips have been drawn together
        flipped.epoch = epoch
        it = flipped[0]
        assert isinstance(it, OccupancyItem)
        fx = it.voxels.points[0, 1] == -plain[0].voxels.points[0, 1]
        fy = it.voxels.points[0, 0] == -plain[0].voxels.points[0, 0]
        seen.add((bool(fx), bool(fy)))
        fr = VoxelStore.open(store)[plain.frames[0]]
        expected = dense_target(point_rows(it.voxels.points, fr.seg_labels, s.head.grid), s.head.grid.shape_zyx)
        # a point exactly on a voxel boundary may change cell under a flip: allow a handful
        assert (it.target != expected).sum() <= 3
        assert len(it.voxels.coords) > 0 and (it.voxels.point_voxel >= 0).any()
    assert (True, True) in seen and len(seen) >= 3


def test_settings_refuse_flips_on_an_asymmetric_grid() -> None:
    grids = {"waymo": {"point_cloud_range": [0.0, -51.2, -2.0, 102.4, 51.2, 4.4], "voxel_size": 0.8}}
    task = OccupancyTask()
    with pytest.raises(ValueError, match="flip_y"):
        task.settings({"grid": grids, "augment": {"flip_x": True, "flip_y": True}}, WAYMO)
    ok = task.settings({"grid": grids, "augment": {"flip_x": True, "flip_y": False}}, WAYMO)
    assert ok.flip_x and not ok.flip_y
    with pytest.raises(ValueError, match="flip_y"):  # the settings themselves refuse it, however built
        OccupancyConfig(OccupancyHead(ok.head.grid), flip_x=False, flip_y=True)
    with pytest.raises(ValueError, match="no entry"):
        task.settings({"grid": grids}, NUSCENES)
    with pytest.raises(ValueError, match="empty_weight"):
        OccupancyHead(empty_weight=0.0)
    head = task.settings({"grid": GRIDS, "empty_weight": 0.2, "trunk_channels": 16}, WAYMO).head
    assert head == OccupancyHead(OccupancyGridSpec.from_params(GRIDS["waymo"]), 0.2, 16)
    import dataclasses
    d = dataclasses.asdict(head)  # as model.pt stores it
    d["grid"] = head.grid.to_dict()
    assert task.head_type.from_dict(d) == head


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def test_metrics_of_a_hand_case() -> None:
    shape = (1, 2, 4)  # 8 voxels
    gt = np.array([[0, 0, 0, 1], [0, 0, 1, 1], [0, 0, 2, 2], [0, 1, 0, IGNORE]])
    pred = np.array([[0, 0, 0, 1], [0, 0, 2, 1], [0, 1, 3, 2], [0, 1, 0, 2]])  # last one on an ignored voxel
    conf = frame_confusion(gt, pred, shape, 2)
    assert conf.sum() == 7  # the ignored voxel is not counted
    # class 1: TP {000}, FP {002}, FN {001} -> 1/3; class 2: TP 0, FP {013}, FN {002} -> 0
    # occupied: truth {000, 001, 002}, prediction {000, 002, 013} -> 2 / 4
    m = metrics_from_confusion(conf, ["a", "b"])
    assert m["per_class_IoU"] == pytest.approx({"a": 1 / 3, "b": 0.0})
    assert m["mIoU"] == pytest.approx(1 / 6) and m["IoU"] == pytest.approx(0.5)
    m = metrics_from_confusion(frame_confusion(gt, gt[:3], shape, 3), ["a", "b", "c"])
    assert m["per_class_IoU"]["c"] is None and m["mIoU"] == 1.0 and m["IoU"] == 1.0


def _truth_folder(world: dict, dataset: str, out: Path, grid: OccupancyGridSpec, drop: int = 0) -> Path:
    store = VoxelStore.open(_store(world, dataset, 1))
    rows, names = {}, {}
    for i in frames_with_ground_truth(store):
        r = frame_ground_truth(store[i], dataset_spec(dataset), grid)
        r = r[r[:, 3] != IGNORE][drop:]
        fid = store.frame_ids[i]
        rows[fid], names[fid] = r, waymo_file_name(fid)
    write_prediction_folder(out, dataset, grid, dataset_spec(dataset).occupancy_classes(store.attrs["classes"]), rows,
                            names)
    return out


@pytest.mark.parametrize("dataset", ["nuscenes", "waymo"])
def test_true_labels_score_perfectly(world, tmp_path, dataset) -> None:
    grid = OccupancyGridSpec.from_params(GRIDS[dataset])
    folder = _truth_folder(world, dataset, tmp_path / "pred", grid)
    m = score_predictions(dataset, folder, _store(world, dataset, 1), tmp_path / "report")
    assert m["mIoU"] == 1.0 and m["IoU"] == 1.0
    present = [v for v in m["per_class_IoU"].values() if v is not None]
    assert len(present) >= 3 and all(v == 1.0 for v in present)
    assert len(m["per_class_IoU"]) == (16 if dataset == "nuscenes" else 22)
    json.dumps(m, allow_nan=False)
    conf = json.loads((tmp_path / "report" / "occupancy_confusion.json").read_text())
    assert conf["classes"][0] == "empty" and conf["frames"] >= 1
    # dropping some true voxels lowers the geometric IoU below 1
    worse = score_predictions(dataset, _truth_folder(world, dataset, tmp_path / "p2", grid, drop=50),
                              _store(world, dataset, 1), tmp_path / "report")
    assert worse["IoU"] < 1.0 and worse["mIoU"] < 1.0


def test_scoring_refuses_bad_predictions(world, tmp_path) -> None:
    grid = OccupancyGridSpec.from_params(GRIDS["waymo"])
    store = _store(world, "waymo", 1)
    folder = _truth_folder(world, "waymo", tmp_path / "pred", grid)
    other = OccupancyGridSpec.from_params({**GRIDS["waymo"], "voxel_size": 0.4})
    with pytest.raises(ValueError, match="meta.json.*grid"):
        score_predictions("waymo", folder, store, tmp_path, grid=other)
    with pytest.raises(ValueError, match="predictions for 'waymo'"):
        score_predictions("nuscenes", folder, store, tmp_path)
    npy = min(folder.glob("*.npy"))
    good = np.load(npy)
    np.save(npy, np.concatenate([good, [[0, 0, 0, 99]]]).astype(np.int16))
    with pytest.raises(ValueError, match=rf"{npy.name}.*labels outside 1..22"):
        score_predictions("waymo", folder, store, tmp_path)
    np.save(npy, np.concatenate([good, [[0, 200, 0, 1]]]).astype(np.int16))
    with pytest.raises(ValueError, match=rf"{npy.name}.*outside"):
        score_predictions("waymo", folder, store, tmp_path)
    np.save(npy, good)
    meta = json.loads((folder / META).read_text())
    meta["frames"]["stray"] = "no-such-frame/1"
    (folder / META).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"meta.json: file stray.npy is frame 'no-such-frame/1'"):
        score_predictions("waymo", folder, store, tmp_path)
    (folder / META).unlink()
    with pytest.raises(ValueError, match="meta.json: missing"):
        score_predictions("waymo", folder, store, tmp_path)


# ----------------------------------------------------------------------------------------------
# Model and fine-tuning
# ----------------------------------------------------------------------------------------------


def test_head_shapes_and_the_loss_decreases(world) -> None:
    store = _store(world, "nuscenes", 0)
    s = _settings("nuscenes")
    mp = world["models"]["nuscenes"]
    ds = OccupancyDataset(store, mp["point_features"], s.head.grid)
    batch = collate_occupancy([ds[0]])
    torch.manual_seed(0)
    model = OccupancyTask().build(NUSCENES, mp, VoxelStore.open(store).attrs, s.head)
    assert isinstance(model, Occupier)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        loss, logs = model.loss(batch)
        assert set(logs) == {"ce", "geo_iou"} and 0 <= logs["geo_iou"] <= 1
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses
    logits = model(batch)
    assert logits.shape == (1, 17, 10, 128, 128)
    pred = model.predict(batch)
    assert pred.shape == (1, 10, 128, 128) and pred.dtype == torch.uint8 and int(pred.max()) <= 16
    assert torch.equal(pred, logits.argmax(1).to(torch.uint8))


def test_finetune_then_predict_then_score_end_to_end(world, tmp_path) -> None:
    store, val = _store(world, "nuscenes", 0), _store(world, "nuscenes", 1)
    out = tmp_path / "model"
    train = TrainConfig(epochs=1, batch_size=2, lr=3e-3, weight_decay=0.01)
    task = OccupancyTask()
    metrics = finetune(task, _settings("nuscenes"), FinetuneRun(NUSCENES, world["models"]["nuscenes"], store, out,
                                                                train, DistInfo(), progress=False))
    assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0
    for f in ("model.pt", "checkpoint.pt", "init_report.json"):
        assert (out / f).is_file(), f
    assert json.loads((out / "init_report.json").read_text())["init"] == "scratch"
    state = torch.load(out / "model.pt", weights_only=False)
    assert state["format"] == "gpicture-occupancy" and state["dataset"] == "nuscenes"
    model = load_model(task, out / "model.pt", NUSCENES, VoxelStore.open(val).attrs)
    assert model.grid_spec.shape_zyx == (10, 128, 128) and model.grid_spec == _settings("nuscenes").head.grid
    assert not model.training
    reports = tmp_path / "reports"
    preds = list(predict(task, model, val))
    assert [p.frame_index for p in preds] == frames_with_ground_truth(VoxelStore.open(val))
    assert all(p.labels.shape == (10, 128, 128) and p.grid == model.grid_spec for p in preds)
    n = write_occupancy(NUSCENES, preds, val, reports)
    folder = predictions_folder(reports)
    assert n == len(VoxelStore.open(val)) == len(list(folder.glob("*.npy")))
    # files are named like the real nuScenes-Occupancy files (LIDAR_TOP sample_data tokens)
    real = {p.stem for p in (world["root"] / "raw" / "nuscenes" / "nuScenes-Occupancy").rglob("*.npy")}
    assert {p.stem for p in folder.glob("*.npy")} <= real
    rows = np.load(next(folder.glob("*.npy")))
    assert rows.ndim == 2 and rows.shape[1] == 4 and rows.dtype == np.int16
    assert read_rows(next(folder.glob("*.npy")), model.grid_spec, 16).shape == rows.shape
    meta = json.loads((folder / META).read_text())
    assert meta["grid"] == _settings("nuscenes").head.grid.to_dict()
    m = score_predictions("nuscenes", folder, val, reports)
    assert set(m) == {"mIoU", "IoU", "per_class_IoU", "frames", "truth"}
    assert m["truth"] == "occupancy rows" and m["frames"] == len(VoxelStore.open(val))
    assert 0.0 <= m["IoU"] <= 1.0 and 0.0 <= m["mIoU"] <= 1.0
    # a model of one dataset is refused on a store of the other
    with pytest.raises(ValueError, match="nuscenes model"):
        load_model(task, out / "model.pt", WAYMO, VoxelStore.open(_store(world, "waymo", 1)).attrs)
    with pytest.raises(ValueError, match="nuscenes model"):  # the store's dataset is checked too
        load_model(task, out / "model.pt", NUSCENES, VoxelStore.open(_store(world, "waymo", 1)).attrs)
    with pytest.raises(ValueError, match="not a gpicture occupancy model"):
        load_model(task, out / "checkpoint.pt", NUSCENES, VoxelStore.open(val).attrs)
    with pytest.raises(ValueError, match="no such occupancy model"):
        load_model(task, out / "missing.pt", NUSCENES, VoxelStore.open(val).attrs)
