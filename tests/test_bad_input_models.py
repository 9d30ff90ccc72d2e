"""Bad input on the model side (issue 20): NaN teacher weights and features, non-finite losses
and gradients in training, poisoned or foreign checkpoints, stores of the other dataset, and
the evaluation's empty or unwritable files. Each case: the exit code, a message naming the
file, and what is (not) left on disk."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr
from torch import nn
from typer.testing import CliRunner

from gpicture.data.batch import VoxelBatch, VoxelItem
from gpicture.data.convert import ConvertConfig, convert
from gpicture.data.store import StoreError, VoxelStore
from gpicture.data.voxelize import VoxelGrid
from gpicture.eval.nuscenes_submission import write_submission
from gpicture.models.student import Student, StudentConfig
from gpicture.synth.generate import SynthConfig, generate_nuscenes, generate_waymo
from gpicture.teacher import SealTeacher
from gpicture.teacher.cache import NonFiniteFeatures, TeacherConfig, TeacherStore, build_teacher_store
from gpicture.teacher.checkpoint import CheckpointError
from gpicture.training import finetune as finetune_mod
from gpicture.training import pretrain as pretrain_mod
from gpicture.training.engine import DistInfo, NonFiniteError, TrainConfig, fit, save_atomic
from gpicture.training.finetune import load_pretrained_student
from gpicture.training.pretrain import save_student
from stages.cli import app

REPO = Path(__file__).resolve().parent.parent
TINY = {"d_model": 32, "vfe_filters": [32, 32], "dim_feedforward": 48, "set_size": 24}


def _run(args: list[str]):  # noqa: ANN202
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("badmodels")
    generate_nuscenes(SynthConfig(scenes=3, frames=2, sweeps_before=1, seed=8, occupancy=False, workers=2),
                      root / "raw" / "nuscenes")
    generate_waymo(SynthConfig(scenes=2, frames=2, seed=3, workers=2), root / "raw" / "waymo")
    nus = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.4, 0.4, 0.4))
    way = VoxelGrid((-74.88, -74.88, -2.0, 74.88, 74.88, 4.0), (0.64, 0.64, 0.375))
    for split in ("mini_train", "mini_val"):
        convert(ConvertConfig("nuscenes", root / "raw" / "nuscenes", split, nus, sweeps=2), root / f"nus-{split}.zarr")
    for split in ("training", "validation"):
        convert(ConvertConfig("waymo", root / "raw" / "waymo", split, way), root / f"way-{split}.zarr")
    build_teacher_store(root / "nus-mini_train.zarr", root / "nus-teacher.zarr", SealTeacher.from_checkpoint(None),
                        TeacherConfig(input_scale=1 / 255, keyframe_only=False))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for d in ("nuscenes", "waymo"):
        params["model"]["profiles"]["small"][d].update(TINY)
    params["convert"]["nuscenes"]["root"] = str(root / "raw" / "nuscenes")
    params["pretrain"]["procs"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    params["pretrain"]["lr"] = 1e30  # a diverging run: the weights overflow after the first step
    (root / "diverging.yaml").write_text(yaml.safe_dump(params))
    profile = params["model"]["profiles"]["small"]["nuscenes"]
    attrs = VoxelStore.open(root / "nus-mini_train.zarr").attrs
    torch.manual_seed(0)
    save_student(Student(StudentConfig.from_params(profile, attrs)), profile, attrs, root / "student.pt")
    return {"root": root, "params": root / "params.yaml", "diverging": root / "diverging.yaml",
            "nus_train": root / "nus-mini_train.zarr", "nus_val": root / "nus-mini_val.zarr",
            "way_train": root / "way-training.zarr", "way_val": root / "way-validation.zarr",
            "teacher": root / "nus-teacher.zarr", "student": root / "student.pt", "profile": profile}


# ----------------------------------------------------------------------------------------------
# Row 1: the teacher
# ----------------------------------------------------------------------------------------------


def test_a_nan_teacher_weight_is_refused_at_load(world, tmp_path) -> None:
    sd = dict(SealTeacher.from_checkpoint(None).net.state_dict())
    sd["block3.1.conv2.kernel"] = sd["block3.1.conv2.kernel"].clone()
    sd["block3.1.conv2.kernel"][0, 0, 0] = float("nan")
    torch.save({"state_dict": sd}, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"nan\.pt: non-finite weights .* block3\.1\.conv2\.kernel"):
        SealTeacher.from_checkpoint(tmp_path / "nan.pt")
    out = tmp_path / "t.zarr"
    r = _run(["teacher", "--store", world["nus_train"], "--out", out, "--checkpoint", tmp_path / "nan.pt",
              "--params", world["params"]])
    assert r.exit_code == 2, r.output
    assert "nan.pt: non-finite weights" in r.output and "Traceback" not in r.output
    assert not out.exists() and not (tmp_path / ".t.zarr.partial").exists()


def test_non_finite_teacher_features_are_never_written(world, tmp_path, monkeypatch) -> None:
    encode = SealTeacher.encode

    def nan_for_the_second_frame(self, coords, feats):  # noqa: ANN001, ANN202
        out = encode(self, coords, feats)
        out[np.asarray(coords)[:, 0] == 1] = np.nan  # frame 1 of the batch
        return out

    monkeypatch.setattr(SealTeacher, "encode", nan_for_the_second_frame)
    out = tmp_path / "t.zarr"
    r = _run(["teacher", "--store", world["nus_train"], "--out", out, "--init", "random", "--params", world["params"]])
    assert r.exit_code == 2, r.output
    frame = VoxelStore.open(world["nus_train"]).frame_ids[1]
    assert str(world["nus_train"]) in r.output.replace("\n", "") and frame in r.output and "non-finite" in r.output
    assert not out.exists()
    with pytest.raises(NonFiniteFeatures, match="overflowed on finite input"):
        build_teacher_store(world["nus_train"], tmp_path / "u.zarr", SealTeacher.from_checkpoint(None),
                            TeacherConfig(input_scale=1 / 255, batch_frames=2))
    assert not (tmp_path / "u.zarr").exists()


def test_a_tampered_teacher_store_is_refused(world, tmp_path) -> None:
    bad = tmp_path / "tampered.zarr"
    shutil.copytree(world["teacher"], bad)
    good = TeacherStore.open(world["teacher"])
    v0 = int(good._ptr[1])
    g = zarr.open_group(str(bad), mode="r+")
    g["features"][v0:v0 + 3] = np.full((3, 64), np.nan, np.float16)
    store = TeacherStore.open(bad)
    assert store.valid_fraction() < good.valid_fraction()  # NaN rows are not "valid"
    store.frame(0)
    with pytest.raises(StoreError, match=r"tampered\.zarr: frame 1 has 3 of \d+ voxels with non-finite"):
        store.frame(1)
    out = tmp_path / "pre"
    r = _run(["pretrain", "--dataset", "nuscenes", "--store", world["nus_train"], "--teacher", bad, "--out", out,
              "--epochs", "1", "--procs", "1", "--params", world["params"]])
    assert r.exit_code == 2, r.output
    assert "tampered.zarr: frame 1" in r.output and not (out / "checkpoint.pt").exists()
    assert not (out / "student.pt").exists()


# ----------------------------------------------------------------------------------------------
# Row 2: training stops at the first non-finite loss or gradient
# ----------------------------------------------------------------------------------------------

IDS = ["f0", "f1", "f2", "f3"]


class _Frames(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return len(IDS)

    def __getitem__(self, k: int) -> VoxelItem:
        return VoxelItem(np.full((1, 3), k, np.float32), np.full((1, 1), k + 1, np.float32),
                         np.zeros((1, 3), np.int32), np.zeros(1, np.int64), k)


class _NaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return x.clone()

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        return g * float("nan")


def _fit(tmp_path: Path, bad_step: int, how: str, seen: dict, resume: bool = True):  # noqa: ANN202
    torch.manual_seed(0)
    model = nn.Linear(1, 1)

    def step(m: nn.Module, batch: VoxelBatch, ctx) -> tuple:  # noqa: ANN001
        y = m(batch.features)
        if ctx.step == bad_step:
            seen["frames"] = [IDS[k] for k in batch.frame_index.tolist()]
            seen["weights"] = {k: v.clone() for k, v in m.state_dict().items()}
            y = y * float("nan") if how == "loss" else _NaNGrad.apply(y)
        return y.pow(2).mean(), {}

    cfg = TrainConfig(epochs=2, batch_size=2, lr=0.01, weight_decay=0.0, amp=False)
    return model, lambda: fit(model, _Frames(), VoxelBatch.stack, step, cfg, tmp_path / "run", DistInfo(),
                              progress=False, frame_ids=IDS, resume=resume)


@pytest.mark.parametrize("how", ["loss", "gradient"])
def test_fit_stops_at_the_first_non_finite_step(tmp_path, how) -> None:
    seen: dict = {}
    model, run = _fit(tmp_path, 2, how, seen)  # epoch 2, step 1 (2 steps an epoch)
    with pytest.raises(NonFiniteError) as exc:
        run()
    msg = str(exc.value)
    assert "epoch 2/2, step 1/2 (global step 2)" in msg and str(seen["frames"]) in msg
    assert ("non-finite loss nan" if how == "loss" else "non-finite gradient norm nan") in msg
    for k, v in model.state_dict().items():  # stopped before the optimiser step
        assert torch.equal(v, seen["weights"][k])
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_no_checkpoint_with_non_finite_tensors_is_written_or_resumed(tmp_path) -> None:
    with pytest.raises(NonFiniteError, match=r"bad\.pt: non-finite .* in w; refusing to write it"):
        save_atomic({"w": torch.tensor([1.0, float("inf")])}, tmp_path / "bad.pt")
    assert list(tmp_path.iterdir()) == []
    seen: dict = {}
    _, run = _fit(tmp_path, -1, "loss", seen)
    run()
    ckpt = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=False)
    state["model"]["weight"][0, 0] = float("nan")
    torch.save(state, ckpt)
    _, run = _fit(tmp_path, -1, "loss", seen)
    with pytest.raises(NonFiniteError, match=r"checkpoint\.pt: non-finite .* model\.weight; not resuming"):
        run()


def test_pretrain_cli_stops_with_the_epoch_step_and_frames(world, tmp_path, monkeypatch) -> None:
    step = pretrain_mod._step

    def nan_step(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        loss, m = step(*args, **kw)
        return loss * float("nan"), m

    monkeypatch.setattr(pretrain_mod, "_step", nan_step)
    out = tmp_path / "pre"
    r = _run(["pretrain", "--dataset", "nuscenes", "--store", world["nus_train"], "--teacher", world["teacher"],
              "--out", out, "--epochs", "1", "--procs", "1", "--params", world["params"]])
    assert r.exit_code == 2, r.output
    text = r.output.replace("\n", "")
    assert "epoch 1/1, step 1/" in text and "non-finite loss nan" in text
    assert any(f in text for f in VoxelStore.open(world["nus_train"]).frame_ids)
    assert not (out / "checkpoint.pt").exists() and not (out / "student.pt").exists()


@pytest.mark.parametrize("procs", [1, 2])
def test_a_diverging_pretraining_fails_through_the_launcher(world, tmp_path, procs) -> None:
    out = tmp_path / "pre"
    r = _run(["pretrain", "--dataset", "nuscenes", "--store", world["nus_train"], "--teacher", world["teacher"],
              "--out", out, "--epochs", "1", "--procs", procs, "--params", world["diverging"]])
    assert r.exit_code == 2, r.output
    text = r.output.replace("\n", "")
    assert "error:" in text and "non-finite" in text and "Traceback" not in text
    # at the first step with a non-finite loss, or (one step an epoch) when the epoch's checkpoint would hold them
    assert "on frames ['" in text or "after epoch 1/1 the training diverged" in text
    assert not (out / "checkpoint.pt").exists() and not (out / "student.pt").exists()


def test_finetune_cli_stops_at_a_non_finite_loss(world, tmp_path, monkeypatch) -> None:
    step = finetune_mod._step

    def nan_step(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        loss, m = step(*args, **kw)
        return loss + float("inf"), m

    monkeypatch.setattr(finetune_mod, "_step", nan_step)
    out = tmp_path / "ft"
    r = _run(["finetune", "--task", "segmentation", "--dataset", "nuscenes", "--init", "scratch", "--epochs", "1",
              "--procs", "1", "--store", world["nus_train"], "--out", out, "--params", world["params"]])
    assert r.exit_code == 2, r.output
    assert "non-finite loss inf" in r.output.replace("\n", "") and "epoch 1/1, step 1/" in r.output.replace("\n", "")
    assert not (out / "model.pt").exists() and not (out / "checkpoint.pt").exists()


# ----------------------------------------------------------------------------------------------
# Rows 3, 4, 6: input checkpoints (non-finite, another dataset or grid, not a checkpoint)
# ----------------------------------------------------------------------------------------------


def _finetune(world, out: Path, init, dataset: str = "nuscenes", store=None):  # noqa: ANN001, ANN202
    store = store or (world["nus_train"] if dataset == "nuscenes" else world["way_train"])
    return _run(["finetune", "--task", "segmentation", "--dataset", dataset, "--init", init, "--epochs", "1",
                 "--procs", "1", "--store", store, "--out", out, "--params", world["params"]])


def test_finetune_refuses_a_student_with_non_finite_weights(world, tmp_path) -> None:
    state = torch.load(world["student"], weights_only=False)
    key = next(iter(state["student"]))
    state["student"][key] = state["student"][key].clone().fill_(float("nan"))
    torch.save(state, tmp_path / "nan-student.pt")
    r = _finetune(world, tmp_path / "ft", tmp_path / "nan-student.pt")
    assert r.exit_code == 2, r.output
    assert "nan-student.pt: non-finite (NaN / inf) values in " + key in r.output.replace("\n", "")
    assert not (tmp_path / "ft" / "model.pt").exists() and not (tmp_path / "ft" / "checkpoint.pt").exists()


def test_evaluate_refuses_a_model_with_non_finite_weights(world, tmp_path) -> None:
    torch.save({"format": "gpicture-segmentation", "dataset": "nuscenes", "model_params": world["profile"],
                "head": {}, "state": {"head.weight": torch.tensor([1.0, float("nan")])}}, tmp_path / "model.pt")
    out = tmp_path / "m.json"
    r = _run(["evaluate", "--task", "segmentation", "--dataset", "nuscenes", "--model", tmp_path / "model.pt",
              "--store", world["nus_val"], "--out", out, "--report-dir", tmp_path / "rep", "--params", world["params"]])
    assert r.exit_code == 2, r.output
    assert "model.pt: non-finite (NaN / inf) values in head.weight" in r.output.replace("\n", "")
    assert not out.exists()


def test_the_student_records_its_dataset_grid_and_profile(world) -> None:
    state = torch.load(world["student"], weights_only=False)
    attrs = VoxelStore.open(world["nus_train"]).attrs
    assert state["dataset"] == "nuscenes" and state["model_params"] == world["profile"]
    assert state["grid"] == {k: attrs[k] for k in ("voxel_size", "point_cloud_range", "grid_shape_zyx")}


def test_a_nuscenes_student_is_refused_on_waymo(world, tmp_path) -> None:
    r = _finetune(world, tmp_path / "ft", world["student"], dataset="waymo")
    assert r.exit_code == 2, r.output
    text = r.output.replace("\n", "")
    assert f"{world['student']}: a student pre-trained on nuscenes, but this fine-tune is on waymo" in text
    assert not (tmp_path / "ft" / "model.pt").exists()


def test_a_student_of_another_grid_is_refused_and_its_own_loads(world, tmp_path) -> None:
    state = torch.load(world["student"], weights_only=False)
    state["grid"] = {**state["grid"], "voxel_size": [0.2, 0.2, 0.2]}
    torch.save(state, tmp_path / "grid.pt")
    r = _finetune(world, tmp_path / "ft", tmp_path / "grid.pt")
    assert r.exit_code == 2, r.output
    assert "grid.pt: pre-trained on another grid than this store's: voxel_size [0.2, 0.2, 0.2]" in \
        r.output.replace("\n", "")
    r = _finetune(world, tmp_path / "ok", world["student"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ok" / "init_report.json").read_text())["loaded"] > 0


def test_an_older_student_without_the_record_loads_with_a_warning(world, tmp_path, caplog) -> None:
    state = torch.load(world["student"], weights_only=False)
    del state["dataset"], state["grid"]
    torch.save(state, tmp_path / "old.pt")
    student = Student(StudentConfig.from_params(world["profile"], VoxelStore.open(world["nus_train"]).attrs))
    with caplog.at_level(logging.WARNING):
        report = load_pretrained_student(student, tmp_path / "old.pt", "waymo")
    assert report["loaded"] and "old.pt: records no dataset or grid" in caplog.text


@pytest.mark.parametrize("kind", ["text", "empty", "zarr"])
def test_init_that_is_no_checkpoint_is_refused(world, tmp_path, kind) -> None:
    path = {"text": tmp_path / "notes.txt", "empty": tmp_path / "empty.pt", "zarr": world["nus_val"]}[kind]
    if kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "empty":
        path.write_bytes(b"")
    r = _finetune(world, tmp_path / "ft", path)
    assert r.exit_code == 2, r.output
    assert f"error: {path}: " in r.output.replace("\n", "") and "Aborted" not in r.output
    assert ("a folder, not a pre-trained student" if kind == "zarr" else "not a readable PyTorch checkpoint") in \
        r.output.replace("\n", "")
    assert not (tmp_path / "ft" / "model.pt").exists()


# ----------------------------------------------------------------------------------------------
# Row 5: a store of the other dataset
# ----------------------------------------------------------------------------------------------


def test_a_store_of_the_other_dataset_is_refused_by_every_stage(world, tmp_path) -> None:
    way = world["way_train"]
    want = f"{way}: a waymo store, but the "
    r = _finetune(world, tmp_path / "ft", "scratch", dataset="nuscenes", store=way)
    assert r.exit_code == 2 and want + "fine-tune is on nuscenes" in r.output.replace("\n", ""), r.output
    r = _run(["pretrain", "--dataset", "nuscenes", "--store", way, "--teacher", world["teacher"], "--out",
              tmp_path / "pre", "--epochs", "1", "--procs", "1", "--params", world["params"]])
    assert r.exit_code == 2 and want + "pre-training is on nuscenes" in r.output.replace("\n", ""), r.output
    r = _run(["evaluate", "--task", "detection", "--dataset", "nuscenes", "--model", world["student"], "--store", way,
              "--out", tmp_path / "m.json", "--report-dir", tmp_path / "rep", "--params", world["params"]])
    assert r.exit_code == 2 and want + "evaluation is on nuscenes" in r.output.replace("\n", ""), r.output
    assert "time_lag" not in r.output
    assert not (tmp_path / "ft" / "model.pt").exists() and not (tmp_path / "pre" / "checkpoint.pt").exists()
    assert not (tmp_path / "m.json").exists()


# ----------------------------------------------------------------------------------------------
# Row 7: evaluation
# ----------------------------------------------------------------------------------------------


def _evaluate(world, predictions: Path, out: Path, report: Path, dataset: str = "nuscenes"):  # noqa: ANN001, ANN202
    return _run(["evaluate", "--task", "detection", "--dataset", dataset, "--predictions", predictions,
                 "--store", world["nus_val"] if dataset == "nuscenes" else world["way_val"], "--out", out,
                 "--report-dir", report, "--params", world["params"]])


def _empty_submission(world, path: Path) -> Path:  # noqa: ANN001
    ids = VoxelStore.open(world["nus_val"]).frame_ids
    write_submission({"meta": {"use_lidar": True, "use_camera": False, "use_radar": False, "use_map": False,
                               "use_external": False}, "results": {t: [] for t in ids}}, path)
    return path


def test_an_empty_waymo_predictions_file_is_refused(world, tmp_path) -> None:
    (tmp_path / "objects.bin").write_bytes(b"")
    r = _evaluate(world, tmp_path / "objects.bin", tmp_path / "m.json", tmp_path / "rep", dataset="waymo")
    assert r.exit_code == 2, r.output
    assert f"{tmp_path / 'objects.bin'}: an empty predictions file (0 bytes)" in r.output.replace("\n", "")
    assert not (tmp_path / "m.json").exists()


def test_a_nuscenes_submission_without_boxes_scores_zero(world, tmp_path, caplog) -> None:
    sub = _empty_submission(world, tmp_path / "empty.json")
    with caplog.at_level(logging.WARNING):
        r = _evaluate(world, sub, tmp_path / "m.json", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["mAP"] == 0.0 and metrics["NDS"] == 0.0 and set(metrics["per_class_AP"].values()) == {0.0}
    assert all(v == 1.0 for v in metrics["tp_errors"].values())
    assert "empty.json: a submission without a single box" in caplog.text
    assert (tmp_path / "rep" / "metrics_summary.json").is_file()


def test_devkit_failures_become_messages_naming_the_file(world, tmp_path, monkeypatch) -> None:
    from nuscenes.eval.detection.evaluate import DetectionEval

    def broken(self):  # noqa: ANN001, ANN202
        raise KeyError("sample_annotation")

    monkeypatch.setattr(DetectionEval, "evaluate", broken)
    sub = _empty_submission(world, tmp_path / "sub.json")
    r = _evaluate(world, sub, tmp_path / "m.json", tmp_path / "rep")
    assert r.exit_code == 2, r.output
    assert f"{sub}: the nuScenes devkit's DetectionEval failed on it (KeyError" in r.output.replace("\n", "")
    assert "Traceback" not in r.output and not (tmp_path / "m.json").exists()


def test_an_unwritable_out_fails_before_scoring(world, tmp_path, monkeypatch) -> None:
    import gpicture.eval.detection as detection

    def must_not_score(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("scored before checking --out")

    monkeypatch.setattr(detection, "evaluate_submission", must_not_score)
    sub = _empty_submission(world, tmp_path / "sub.json")
    (tmp_path / "file").write_text("a file, not a folder")
    out = tmp_path / "file" / "m.json"
    r = _evaluate(world, sub, out, tmp_path / "rep")
    assert r.exit_code == 2, r.output
    assert f"{out}: cannot be written" in r.output.replace("\n", "") and not (tmp_path / "rep").exists()
    if os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            r = _evaluate(world, sub, ro / "m.json", tmp_path / "rep")
            assert r.exit_code == 2 and f"{ro / 'm.json'}: cannot be written" in r.output.replace("\n", ""), r.output
        finally:
            ro.chmod(0o755)
