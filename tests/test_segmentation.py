"""3D semantic segmentation: Lovász-softmax, mIoU against the nuScenes devkit, the prediction
formats, fine-tuning from scratch and from a pre-trained student, end to end on tiny
synthetic nuScenes and Waymo splits."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gpicture.data.batch import VoxelItem
from gpicture.data.convert import ConvertConfig, convert
from gpicture.data.nuscenes_reader import open_nuscenes
from gpicture.data.spec import IGNORE_INDEX as IGNORE
from gpicture.data.spec import NUSCENES, WAYMO, dataset_spec, nuscenes_class_mapper
from gpicture.data.store import VoxelStore
from gpicture.data.voxelize import VoxelGrid
from gpicture.eval.predictions import RawSource as NuScenesSource
from gpicture.eval.segmentation import (
    PREDICTIONS,
    SUBMISSION_META,
    _fill_removed,
    _kept_mask,
    _lidar_files,
    confusion_miou,
    write_segmentation,
)
from gpicture.eval.segmentation import score_segmentation as _score_segmentation
from gpicture.models.segmentation import Segmenter, lovasz_softmax
from gpicture.models.student import Student, StudentConfig
from gpicture.synth.generate import SynthConfig, generate_nuscenes, generate_waymo
from gpicture.tasks.segmentation import (
    SegmentationDataset,
    SegmentationHead,
    SegmentationItem,
    SegmentationConfig,
    SegmentationTask,
    collate_segmentation,
)
from gpicture.training.engine import DistInfo, TrainConfig, save_atomic
from gpicture.training.finetune import (
    FinetuneRun,
    finetune,
    load_model,
    load_pretrained_student,
    predict,
)

REPO = Path(__file__).resolve().parent.parent
TINY = {"d_model": 32, "vfe_filters": [32, 32], "dim_feedforward": 48, "set_size": 24}
SPLITS = {"nuscenes": ("mini_train", "mini_val"), "waymo": ("training", "validation")}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("seg")
    generate_nuscenes(SynthConfig(scenes=3, frames=2, sweeps_before=1, seed=8, occupancy=False, workers=2),
                      root / "raw" / "nuscenes")
    generate_waymo(SynthConfig(scenes=2, frames=2, seed=3, workers=2), root / "raw" / "waymo")
    nus = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.4, 0.4, 0.4))
    way = VoxelGrid((-74.88, -74.88, -2.0, 74.88, 74.88, 4.0), (0.64, 0.64, 0.375))
    for split in SPLITS["nuscenes"]:
        convert(ConvertConfig("nuscenes", root / "raw" / "nuscenes", split, nus, sweeps=2),
                root / "nuscenes" / f"{split}.zarr")
    for split in SPLITS["waymo"]:
        convert(ConvertConfig("waymo", root / "raw" / "waymo", split, way), root / "waymo" / f"{split}.zarr")
    profiles = yaml.safe_load((REPO / "params.yaml").read_text())["model"]["profiles"]["small"]
    return {"root": root, "model_params": {d: {**profiles[d], **TINY} for d in ("nuscenes", "waymo")},
            "nusc_source": NuScenesSource(root / "raw" / "nuscenes", "v1.0-mini", "mini_val")}


@pytest.fixture(scope="module")
def nus_close(world, tmp_path_factory) -> NuScenesSource:
    """The raw nuScenes of ``world`` (symlinked) where the first val keyframe gains four
    labelled points within 1 m of the sensor, inserted mid-file: the reader drops them, so
    the store still fits, but predictions and the devkit count them."""
    copy = tmp_path_factory.mktemp("nus_close") / "nuscenes"
    shutil.copytree(world["nusc_source"].root, copy, copy_function=os.symlink)
    nusc = open_nuscenes(copy, "v1.0-mini")
    _, pcd, labels = _lidar_files(nusc, VoxelStore.open(_store(world, "nuscenes", 1)).frame_ids[0])
    scan = np.fromfile(pcd, np.float32).reshape(-1, 5)
    lab = np.fromfile(labels, np.uint8)
    close = np.array([[0.3, 0.2, -0.5, 10, 0], [-0.5, 0.4, -0.5, 12, 1], [0.1, -0.9, -0.4, 9, 2],
                      [0.2, 0.1, 0.3, 5, 3]], np.float32)
    close_labels = np.array([17, 31, 2, 17], np.uint8)  # car, ego (ignored), adult pedestrian, car
    for path, data in ((pcd, np.concatenate([scan[:100], close, scan[100:]])),
                       (labels, np.concatenate([lab[:100], close_labels, lab[100:]]))):
        path.unlink()
        data.tofile(path)
    return NuScenesSource(copy, "v1.0-mini", "mini_val")


def score_predictions(dataset: str, predictions: Path, store: Path, report_dir: Path,
                      source: NuScenesSource | None = None) -> dict:
    return _score_segmentation(dataset_spec(dataset), predictions, store, report_dir, source)


def _store(world: dict, dataset: str, which: int) -> Path:
    return world["root"] / dataset / f"{SPLITS[dataset][which]}.zarr"


# -- Lovász-softmax -------------------------------------------------------------------------------


def _jaccard_loss(mistakes: np.ndarray, fg: np.ndarray) -> float:
    """Delta_J(M) = |M| / |fg ∪ M| for a set of mispredicted points M (bool masks)."""
    union = (fg | mistakes).sum()
    return float(mistakes.sum() / union) if union else 0.0


def _lovasz_brute_force(probs: np.ndarray, labels: np.ndarray) -> float:
    """The Lovász extension of each present class's Jaccard loss as the integral over
    thresholds t of Delta_J({i : m_i > t}) (exact: the integrand is piecewise constant)."""
    losses = []
    for c in np.unique(labels):
        fg = labels == c
        m = np.where(fg, 1 - probs[:, c], probs[:, c])
        ts = np.concatenate([[0.0], np.sort(m), [1.0]])
        losses.append(sum((b - a) * _jaccard_loss(m > (a + b) / 2, fg) for a, b in itertools.pairwise(ts) if b > a))
    return float(np.mean(losses))


def test_lovasz_softmax_equals_the_lovasz_extension_by_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        probs = torch.softmax(torch.from_numpy(rng.normal(size=(9, 4))) * 2, 1)
        labels = torch.from_numpy(rng.integers(0, 3, 9))  # class 3 never present: not averaged
        got = float(lovasz_softmax(probs, labels))
        assert got == pytest.approx(_lovasz_brute_force(probs.numpy(), labels.numpy()), abs=1e-9)


def test_lovasz_softmax_of_hard_predictions_is_one_minus_iou_and_ignores_unlabelled() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, IGNORE])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    probs = torch.nn.functional.one_hot(pred, 3).double()
    # IoU: class 0 1/2, class 1 2/3, class 2 1 (the ignored point is left out)
    assert float(lovasz_softmax(probs, labels)) == pytest.approx(np.mean([1 - 1 / 2, 1 - 2 / 3, 0.0]))
    probs.requires_grad_(True)
    lovasz_softmax(probs, labels).backward()
    assert probs.grad is not None and torch.isfinite(probs.grad).all() and probs.grad[-1].abs().sum() == 0


def test_confusion_miou_on_a_known_case() -> None:
    gt = np.array([0, 1, 1, 2, 2, 2, 3])
    pred = np.array([2, 1, 2, 2, 2, 1, 3])
    miou, iou, cm = confusion_miou(gt, pred, 4, ignore_index=0)
    assert cm[0].sum() == 0 and cm[:, 0].sum() == 0 and cm.sum() == 6
    assert iou[1] == pytest.approx(1 / 3) and iou[2] == pytest.approx(2 / 4) and iou[3] == 1.0 and np.isnan(iou[0])
    assert miou == pytest.approx((1 / 3 + 1 / 2 + 1) / 3)


# -- labels ----------------------------------------------------------------------------------------


def test_training_classes_follow_the_devkit_mapping(world) -> None:
    attrs = VoxelStore.open(_store(world, "nuscenes", 0)).attrs
    names, lut = NUSCENES.segmentation_classes(attrs["classes"])
    mapper = nuscenes_class_mapper(list(attrs["classes"]))
    assert len(names) == 16 and names[0] == "barrier" and names[-1] == "vegetation"
    raw = {n: i for i, n in enumerate(attrs["classes"])}
    assert names[lut[raw["vehicle.car"]]] == "car"
    assert lut[raw["vehicle.ego"]] == IGNORE and lut[raw["noise"]] == IGNORE and lut[255] == IGNORE
    for fine, coarse in mapper.fine_idx_2_coarse_idx_mapping.items():
        assert lut[fine] == (IGNORE if coarse == 0 else coarse - 1)
    wnames, wlut = WAYMO.segmentation_classes(VoxelStore.open(_store(world, "waymo", 0)).attrs["classes"])
    assert len(wnames) == 22 and wnames[0] == "CAR" and wlut[0] == IGNORE and wlut[22] == 21 and wlut[255] == IGNORE


def test_dataset_segments_the_keyframe_points_in_pcd_order(world) -> None:
    store = _store(world, "nuscenes", 1)
    src = VoxelStore.open(store)
    ds = SegmentationDataset(store, ["intensity", "time_lag"])
    nusc = open_nuscenes(world["nusc_source"].root, "v1.0-mini")
    item = ds[0]
    fr = src[0]
    assert isinstance(item, SegmentationItem) and item.voxels.index == 0
    assert len(item.seg_rows) < len(fr.points)  # the second sweep is not segmented
    assert len(item.seg_rows) == NUSCENES.segmented_count(fr) and len(item.labels) == len(item.seg_rows)
    _, pcd, _ = _lidar_files(nusc, fr.frame_id)
    xyz, keep = _kept_mask(pcd)
    np.testing.assert_allclose(fr.points[item.seg_rows], xyz[keep], atol=1e-3)
    assert (fr.features["time_lag"][item.seg_rows] == 0).all()
    np.testing.assert_array_equal(item.voxels.points, fr.points)  # every point feeds the encoder


def test_settings_from_params() -> None:
    task = SegmentationTask()
    s = task.settings({"lovasz_weight": 0.5, "decoder_channels": 16, "augment": {
        "flip_x": True, "flip_y": False, "rotation": [-0.5, 0.5], "scale": [0.9, 1.1], "translation_std": 0.1}},
        WAYMO)
    assert s.head.lovasz_weight == 0.5 and s.head.decoder_channels == 16 and s.augment.rotation == (-0.5, 0.5)
    assert not s.augment.flip_y
    assert s.head == SegmentationHead(0.5, 16) == task.head_type.from_dict({"lovasz_weight": 0.5, "decoder_channels": 16})
    assert task.settings({"augment": None}, NUSCENES).augment is None
    assert task.settings({}, NUSCENES).head == SegmentationHead()
    with pytest.raises(ValueError, match="unknown dataset"):
        dataset_spec("kitti")


# -- scoring ---------------------------------------------------------------------------------------


def _true_nuscenes_predictions(world: dict, out: Path, corrupt: float = 0.0, seed: int = 0,
                               src: NuScenesSource | None = None) -> None:
    """The raw lidarseg labels in the submission layout (ignore -> class 1), a fraction
    ``corrupt`` of them replaced by random classes."""
    src = src or world["nusc_source"]
    nusc = open_nuscenes(src.root, src.version)
    mapper = nuscenes_class_mapper([c["name"] for c in sorted(nusc.category, key=lambda c: c["index"])])
    lut = np.zeros(256, np.uint8)
    for fine, coarse in mapper.fine_idx_2_coarse_idx_mapping.items():
        lut[fine] = coarse
    rng = np.random.default_rng(seed)
    bins = out / "lidarseg" / src.eval_set
    bins.mkdir(parents=True)
    for token in VoxelStore.open(_store(world, "nuscenes", 1)).frame_ids:
        sd_token, _, labels = _lidar_files(nusc, token)
        pred = lut[np.fromfile(labels, np.uint8)]
        pred[pred == 0] = 1
        flip = rng.random(len(pred)) < corrupt
        pred[flip] = rng.integers(1, 17, flip.sum())
        pred.tofile(bins / f"{sd_token}_lidarseg.bin")
    (out / src.eval_set).mkdir()
    (out / src.eval_set / "submission.json").write_text(json.dumps({"meta": SUBMISSION_META}))


def _true_waymo_predictions(world: dict, out: Path, corrupt: float = 0.0, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    src = VoxelStore.open(_store(world, "waymo", 1))
    for i in range(len(src)):
        fr = src[i]
        pred = fr.seg_labels.copy()
        pred[(pred == 0) | (pred == 255)] = 1
        flip = rng.random(len(pred)) < corrupt
        pred[flip] = rng.integers(1, 23, flip.sum())
        (out / fr.frame_id).parent.mkdir(parents=True, exist_ok=True)
        pred.tofile(out / f"{fr.frame_id}.bin")


def test_true_labels_score_one(world, tmp_path) -> None:
    _true_nuscenes_predictions(world, tmp_path / "nus")
    m = score_predictions("nuscenes", tmp_path / "nus", _store(world, "nuscenes", 1), tmp_path / "rep",
                          world["nusc_source"])
    assert m["mIoU"] == 1.0 and m["mIoU_store"] == 1.0
    assert {k for k, v in m["per_class_IoU"].items() if v is not None} >= {"car", "driveable_surface"}
    assert json.loads((tmp_path / "rep" / "segmentation_summary.json").read_text())["mIoU"] == 1.0
    _true_waymo_predictions(world, tmp_path / "way")
    m = score_predictions("waymo", tmp_path / "way", _store(world, "waymo", 1), tmp_path / "rep")
    assert m["mIoU"] == 1.0 and m["per_class_IoU"]["CAR"] == 1.0 and "UNDEFINED" not in m["per_class_IoU"]


def test_our_miou_equals_the_devkit_on_corrupted_labels(world, tmp_path) -> None:
    from nuscenes.eval.lidarseg.evaluate import LidarSegEval

    _true_nuscenes_predictions(world, tmp_path / "nus", corrupt=0.3, seed=1)
    m = score_predictions("nuscenes", tmp_path / "nus", _store(world, "nuscenes", 1), tmp_path / "rep",
                          world["nusc_source"])
    src = world["nusc_source"]
    devkit = LidarSegEval(open_nuscenes(src.root, src.version), str(tmp_path / "nus"), src.eval_set).evaluate()
    assert 0.05 < m["mIoU"] < 0.95
    assert m["mIoU_store"] == pytest.approx(devkit["miou"], abs=1e-12)
    for name, v in m["per_class_IoU"].items():
        assert (v is None and np.isnan(devkit["iou_per_class"][name])) or v == pytest.approx(
            devkit["iou_per_class"][name], abs=1e-6)
    _true_waymo_predictions(world, tmp_path / "way", corrupt=0.3, seed=1)
    w = score_predictions("waymo", tmp_path / "way", _store(world, "waymo", 1), tmp_path / "rep")
    assert 0.05 < w["mIoU"] < 0.95


def test_points_the_store_lacks_are_scored_as_the_devkit_does(world, nus_close, tmp_path) -> None:
    from nuscenes.eval.lidarseg.evaluate import LidarSegEval

    val = _store(world, "nuscenes", 1)
    _true_nuscenes_predictions(world, tmp_path / "true", src=nus_close)
    assert score_predictions("nuscenes", tmp_path / "true", val, tmp_path / "rep", nus_close)["mIoU"] == 1.0
    _true_nuscenes_predictions(world, tmp_path / "bad", corrupt=0.3, seed=2, src=nus_close)
    m = score_predictions("nuscenes", tmp_path / "bad", val, tmp_path / "rep", nus_close)
    devkit = LidarSegEval(open_nuscenes(nus_close.root, "v1.0-mini"), str(tmp_path / "bad"), "mini_val").evaluate()
    assert m["mIoU_store"] == pytest.approx(devkit["miou"], abs=1e-12)


def test_removed_points_take_the_nearest_kept_prediction() -> None:
    xyz = np.array([[10, 0, 0], [0.2, 0.1, 0], [0, -5, 0], [np.nan, 0, 0], [9, 0.5, 0]], np.float32)
    keep = np.array([True, False, True, False, True])
    out = _fill_removed(xyz, keep, np.array([3, 7, 9], np.uint8))
    assert out.tolist() == [3, 7, 7, 7, 9]  # (0.2, 0.1) is nearest (0, -5); NaN is queried at the origin


def test_bad_predictions_folder_names_the_file(world, tmp_path) -> None:
    store = _store(world, "waymo", 1)
    _true_waymo_predictions(world, tmp_path / "p")
    first = min((tmp_path / "p").rglob("*.bin"))
    np.zeros(5, np.uint8).tofile(first)
    with pytest.raises(ValueError, match=f"{first.name}: 5 predictions for"):
        score_predictions("waymo", tmp_path / "p", store, tmp_path / "rep")
    shutil.rmtree(tmp_path / "p")
    _true_waymo_predictions(world, tmp_path / "p")
    stray = tmp_path / "p" / "another_context" / "123.bin"
    stray.parent.mkdir()
    np.ones(3, np.uint8).tofile(stray)
    with pytest.raises(ValueError, match="another_context/123.bin: a prediction for a frame that is not in the split"):
        score_predictions("waymo", tmp_path / "p", store, tmp_path / "rep")
    # nuScenes: predictions written for the train split's samples
    _true_nuscenes_predictions(world, tmp_path / "n")
    bins = sorted((tmp_path / "n" / "lidarseg" / "mini_val").glob("*.bin"))
    bins[0].unlink()
    with pytest.raises(ValueError, match=f"{bins[0].name}: missing prediction file"):
        score_predictions("nuscenes", tmp_path / "n", _store(world, "nuscenes", 1), tmp_path / "rep",
                          world["nusc_source"])
    with pytest.raises(ValueError, match="no such predictions folder"):
        score_predictions("waymo", tmp_path / "nowhere", store, tmp_path / "rep")


# -- training --------------------------------------------------------------------------------------


def test_loss_decreases_on_a_tiny_split(world) -> None:
    store = _store(world, "nuscenes", 0)
    src = VoxelStore.open(store)
    params = world["model_params"]["nuscenes"]
    ds = SegmentationDataset(store, params["point_features"], [0], labelled_only=True)
    item = ds[0]
    v = item.voxels
    key = v.features[:, 1] == 0  # the keyframe's points only: half the work, same labels
    assert key[item.seg_rows].all()  # the keyframe points lead, so seg_rows stay valid rows
    coords, pv = ds.grid.voxelize(v.points[key])
    batch = collate_segmentation([SegmentationItem(VoxelItem(v.points[key], v.features[key], coords, pv, v.index),
                                                   item.seg_rows, item.labels)])
    assert (batch.labels != IGNORE).all() and len(batch.labels) > 100
    torch.manual_seed(0)
    seg = Segmenter(Student(StudentConfig.from_params(params, src.attrs)), 16, hidden=32)
    opt = torch.optim.Adam(seg.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        loss, logs = seg.loss(batch)
        assert set(logs) == {"ce", "lovasz"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses
    seg.eval()
    pred = seg.predict(batch)
    assert pred.shape == batch.labels.shape and int(pred.max()) < 16


def _pretrained_student(world: dict, dataset: str, path: Path) -> Path:
    attrs = VoxelStore.open(_store(world, dataset, 0)).attrs
    torch.manual_seed(1)
    student = Student(StudentConfig.from_params(world["model_params"][dataset], attrs))
    save_atomic({"format": "gpicture-student", "student": student.state_dict(),
                 "model_params": world["model_params"][dataset]}, path)
    return path


def test_pretrained_student_loads_into_the_segmenter(world, tmp_path) -> None:
    path = _pretrained_student(world, "nuscenes", tmp_path / "student.pt")
    attrs = VoxelStore.open(_store(world, "nuscenes", 0)).attrs
    seg = Segmenter(Student(StudentConfig.from_params(world["model_params"]["nuscenes"], attrs)), 16)
    report = load_pretrained_student(seg.student, path)
    want = torch.load(path, weights_only=False)["student"]
    assert set(report["loaded"]) == set(want) and report["unexpected"] == []
    for k, v in want.items():
        assert torch.equal(seg.student.state_dict()[k], v)
    torch.save({"format": "something-else"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt: not a gpicture pre-trained student"):
        load_pretrained_student(seg.student, tmp_path / "bad.pt")


@pytest.mark.parametrize("dataset", ["nuscenes", "waymo"])
def test_finetune_predict_and_score_end_to_end(world, nus_close, tmp_path, dataset) -> None:
    train = TrainConfig(epochs=1, batch_size=2, lr=1e-3, weight_decay=0.01, amp=False)
    init = _pretrained_student(world, dataset, tmp_path / "student.pt") if dataset == "nuscenes" else None
    out = tmp_path / "model"
    settings = SegmentationConfig(head=SegmentationHead(decoder_channels=16))
    spec, task = dataset_spec(dataset), SegmentationTask()
    metrics = finetune(task, settings, FinetuneRun(spec, world["model_params"][dataset], _store(world, dataset, 0), out,
                                                   train, DistInfo(), init=init,
                                                   label_fraction=0.5 if dataset == "waymo" else 1.0, progress=False))
    assert np.isfinite(metrics["loss"]) and metrics["ce"] > 0
    assert (out / "checkpoint.pt").is_file() and (out / "dvclive").is_dir()
    state = torch.load(out / "model.pt", weights_only=False)
    assert state["format"] == "gpicture-segmentation" and state["dataset"] == dataset
    assert state["head"] == {"lovasz_weight": 1.0, "decoder_channels": 16, "grid": "cartesian",
                             "cylinder": (480, 360, 32)}
    report = json.loads((out / "init_report.json").read_text())
    assert report["init"] == (str(init) if init else "scratch") and (report["loaded"] > 0) == (init is not None)
    val = _store(world, dataset, 1)
    src = VoxelStore.open(val)
    rep = tmp_path / "report"
    model = load_model(task, out / "model.pt", spec, src.attrs)
    assert isinstance(model, Segmenter) and model.num_classes == (16 if dataset == "nuscenes" else 22)
    assert not model.training
    with pytest.raises(ValueError, match="not a gpicture detection model"):
        load_model(type("Other", (), {"name": "detection"})(), out / "model.pt", spec, src.attrs)
    other = WAYMO if dataset == "nuscenes" else NUSCENES
    with pytest.raises(ValueError, match=f"a {dataset} model, the store holds"):
        load_model(task, out / "model.pt", other, {"dataset": other.name})
    n = write_segmentation(spec, predict(task, model, val, batch_size=2), val, rep,
                           source=nus_close if dataset == "nuscenes" else None)
    assert n == len(src)
    pred_dir = rep / PREDICTIONS
    assert not [p for p in rep.iterdir() if p.name.startswith(".")]  # no temporary folder left
    if dataset == "nuscenes":
        from nuscenes.eval.lidarseg.validate_submission import validate_submission

        nusc = open_nuscenes(nus_close.root, "v1.0-mini")
        for token in src.frame_ids:
            sd_token, pcd, _ = _lidar_files(nusc, token)
            pred = np.fromfile(pred_dir / "lidarseg" / "mini_val" / f"{sd_token}_lidarseg.bin", np.uint8)
            assert len(pred) == len(_kept_mask(pcd)[0]) and pred.min() >= 1 and pred.max() <= 16
        validate_submission(nusc, str(pred_dir), "mini_val", verbose=False)
        m = score_predictions(dataset, pred_dir, val, rep, nus_close)
        assert m["mIoU"] == pytest.approx(m["mIoU_store"], abs=1e-12)
    else:
        meta = json.loads((pred_dir / "meta.json").read_text())
        assert meta["frames"] == len(src) and meta["classes"][0] == "UNDEFINED"
        fr = src[0]
        pred = np.fromfile(pred_dir / f"{fr.frame_id}.bin", np.uint8)
        assert len(pred) == len(fr.points) and pred.min() >= 1 and pred.max() <= 22
        m = score_predictions(dataset, pred_dir, val, rep)
    assert 0.0 <= m["mIoU"] <= 1.0 and m["frames"] == len(src)
    json.dumps(m, allow_nan=False)
