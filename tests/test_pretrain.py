"""GPICTURE pre-training: batches, losses, learning, exact resume, DDP."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from gpicture.data.convert import ConvertConfig, convert
from gpicture.data.voxelize import VoxelGrid
from gpicture.models.pretrain import chamfer
from gpicture.synth.generate import SynthConfig, generate_nuscenes
from gpicture.teacher import SealTeacher
from gpicture.teacher.cache import TeacherConfig, build_teacher_store
from gpicture.training.engine import DistInfo, TrainConfig
from gpicture.training.pretrain import DGPLConfig, MaskConfig, run_pretrain
from gpicture.training.pretrain_data import PretrainDataset, collate_pretrain

REPO = Path(__file__).resolve().parent.parent
PROFILE = {**yaml.safe_load((REPO / "params.yaml").read_text())["model"]["profiles"]["small"]["nuscenes"],
           "d_model": 32, "vfe_filters": [32, 32], "dim_feedforward": 48, "nhead": 4, "set_size": 24}
ALPHA = (0.97, 0.88, 0.78, 0.64, 0.55, 0.44, 0.36, 0.31)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pretrain")
    generate_nuscenes(SynthConfig(scenes=3, frames=2, sweeps_before=1, seed=5, occupancy=False, workers=2), root / "raw")
    grid = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.4, 0.4, 0.4))
    convert(ConvertConfig("nuscenes", root / "raw", "mini_train", grid, sweeps=2), root / "s.zarr")
    build_teacher_store(root / "s.zarr", root / "t.zarr", SealTeacher.from_checkpoint(None),
                        TeacherConfig(input_scale=1 / 255, keyframe_only=False))
    return root / "s.zarr", root / "t.zarr"


def test_chamfer_equals_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    pred, true = torch.randn(5, 4, 3, generator=g), torch.randn(5, 7, 3, generator=g)
    count = torch.tensor([7, 1, 3, 5, 2])
    want = []
    for i in range(5):
        d = torch.cdist(pred[i], true[i, : count[i]]).square()
        want.append(d.min(1).values.mean() + d.min(0).values.mean())
    torch.testing.assert_close(chamfer(pred, true, count), torch.stack(want).mean())


def test_batches_carry_true_points_and_teacher_targets(data) -> None:
    ds = PretrainDataset(*data)
    b = collate_pretrain([ds[0], ds[1]], ["intensity", "time_lag"], (0.4, 0.4, 0.4), (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0))
    v = len(b.voxels.voxel_coords)
    assert b.teacher.shape == (v, 64) and b.true_points.shape == (v, 64, 3) and b.teacher_valid.all()
    assert (b.true_count >= 1).all() and (b.true_count <= 64).all()
    rows = torch.arange(64)[None] < b.true_count[:, None]
    # inside their voxel, in metres (as the original: the Chamfer loss keeps the paper's scale), not voxel units
    assert (b.true_points[rows].abs() <= 0.2 + 1e-5).all() and b.true_points[rows].abs().max() > 0.15
    # the first point of voxel 0 is its first point in store order
    first = (b.voxels.point_voxel == 0).nonzero()[0, 0]
    centre = (b.voxels.voxel_coords[0, [3, 2, 1]].float() + 0.5) * 0.4 + torch.tensor([-51.2, -51.2, -5.0])
    torch.testing.assert_close(b.true_points[0, 0], b.voxels.points[first] - centre)


def _train_cfg(epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=2, lr=0.003, weight_decay=0.05, seed=0)


def _run(data, out: Path, epochs: int, **kw):
    return run_pretrain(PROFILE, data[0], data[1], out, _train_cfg(epochs), ALPHA, MaskConfig(), DGPLConfig(probe_frames=2),
                        DistInfo(), true_points=32, progress=False, **kw)


def _metric(out: Path, name: str) -> list[float]:
    tsv = (out / "dvclive" / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()[1:]
    return [float(line.split("\t")[-1]) for line in tsv]


def test_pretraining_lowers_both_losses_and_gates_the_teacher(data, tmp_path) -> None:
    out = tmp_path / "run"
    _run(data, out, epochs=6)
    pts, teach, beta = _metric(out, "loss_points"), _metric(out, "loss_teacher"), _metric(out, "beta")
    assert beta[:2] == [0.0, 0.0] and all(b > 0 for b in beta[2:])  # DGPL: teacher term from epoch 2
    assert pts[-1] < 0.7 * pts[0], pts
    assert teach[-1] < 0.85 * teach[2], teach  # learned once the gate opened
    saved = torch.load(out / "student.pt", weights_only=False)
    assert saved["format"] == "gpicture-student" and "vfe.layers.0.linear.weight" in saved["student"]


def test_resume_continues_exactly(data, tmp_path) -> None:
    torch.set_num_threads(1)  # bit-exact comparisons need a fixed reduction order
    _run(data, tmp_path / "straight", epochs=3)
    _run(data, tmp_path / "resumed", epochs=3, stop_after_epochs=1)
    assert not (tmp_path / "resumed" / "student.pt").exists()
    _run(data, tmp_path / "resumed", epochs=3)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=1e-6, msg=k)
    assert _metric(tmp_path / "straight", "loss") == pytest.approx(_metric(tmp_path / "resumed", "loss"), rel=1e-5)
    for run in ("straight", "resumed"):  # the metrics and the checkpoint say what made them
        summary = json.loads((tmp_path / run / "dvclive" / "metrics.json").read_text())
        assert len(summary["provenance"]["git_commit"]) == 40 and "loss" in summary
    assert "torch==" in a["provenance"]["packages"]
    torch.set_num_threads(os.cpu_count() or 1)


def _ddp_worker(rank: int, world: int, init: str, data, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    run_pretrain(PROFILE, data[0], data[1], Path(out), TrainConfig(epochs=1, batch_size=1, lr=0.003, weight_decay=0.05),
                 ALPHA, MaskConfig(), DGPLConfig(probe_frames=2), DistInfo(rank=rank, world_size=world, local_rank=rank),
                 true_points=32, progress=False)
    torch.distributed.destroy_process_group()


def test_two_process_gloo_ddp_matches_single_process(data, tmp_path) -> None:
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_ddp_worker, args=(2, init, data, str(tmp_path / "ddp")), nprocs=2, join=True)
    run_pretrain(PROFILE, data[0], data[1], tmp_path / "single", TrainConfig(epochs=1, batch_size=2, lr=0.003, weight_decay=0.05),
                 ALPHA, MaskConfig(), DGPLConfig(probe_frames=2), DistInfo(), true_points=32, progress=False)
    ddp = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)["model"]
    single = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=False)["model"]
    from gpicture.training.pretrain import build_pretrainer

    torch.manual_seed(0)  # the initial weights both runs started from (run_pretrain seeds with train.seed)

    init_sd = build_pretrainer(PROFILE, PretrainDataset(*data).attrs, ALPHA, decoder_blocks=(1,)).state_dict()
    keys = [k for k in single if single[k].is_floating_point() and "running" not in k]
    moved = sum(float((single[k] - init_sd[k]).norm()) for k in keys)
    apart = sum(float((ddp[k] - single[k]).norm()) for k in keys)
    assert moved > 0
    # Per-process batch-norm statistics differ from one big batch: close, not identical.
    assert apart < 0.35 * moved, (apart, moved)


def test_cka_alpha_from_students(data, tmp_path) -> None:
    from gpicture.training.cka_alpha import cka_alpha
    from gpicture.training.pretrain import build_pretrainer, save_student

    attrs = PretrainDataset(*data).attrs
    paths = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        student = build_pretrainer(PROFILE, attrs, ALPHA).student
        paths.append(tmp_path / f"s{len(paths)}.pt")
        save_student(student, PROFILE, attrs, paths[-1])
    same = cka_alpha(paths[0], [paths[1]], data[0], frames=1)
    assert len(same) == 8 and all(a == pytest.approx(1.0, abs=1e-5) for a in same)
    mixed = cka_alpha(paths[0], [paths[1], paths[2]], data[0], frames=1)
    assert all(m < 1.0 for m in mixed) and all(0.5 < m for m in mixed)  # mean of 1 and CKA(other init) < 1
    from typer.testing import CliRunner

    from stages.cli import app

    r = CliRunner().invoke(app, ["cka", "--pretrained", str(paths[0]), "--finetuned", str(paths[2]),
                                 "--store", str(data[0]), "--out", str(tmp_path / "alpha.yaml"), "--frames", "1"])
    assert r.exit_code == 0, r.output
    assert len(yaml.safe_load((tmp_path / "alpha.yaml").read_text())["alpha"]) == 8


def test_checkpoint_of_another_run_is_not_resumed(data, tmp_path) -> None:
    out = tmp_path / "run"
    _run(data, out, epochs=1)
    first = torch.load(out / "checkpoint.pt", weights_only=False)
    # A changed parameter (other I2Mask ratios) must not resume the finished run: it trains afresh.
    run_pretrain(PROFILE, data[0], data[1], out, _train_cfg(1), ALPHA, MaskConfig(base_mask_ratio=(0.8, 0.4, 0.0)),
                 DGPLConfig(probe_frames=2), DistInfo(), true_points=32, progress=False)
    second = torch.load(out / "checkpoint.pt", weights_only=False)
    assert second["run_key"] != first["run_key"]
    # trained afresh with other masks: weights differ (a resumed, finished run would be unchanged)
    assert any(not torch.equal(second["model"][k], v) for k, v in first["model"].items())


def test_ablation_without_teacher_targets_trains_on_points_only(data) -> None:
    """--no-teacher-targets: the loss is the alpha-weighted point loss even when the gate is open."""
    from gpicture.training.engine import StepContext
    from gpicture.training.pretrain import _step, build_pretrainer, masks_for_batch

    store, teacher = data
    ds = PretrainDataset(store, teacher)
    torch.manual_seed(0)
    model = build_pretrainer(PROFILE, ds.attrs, ALPHA)
    batch = collate_pretrain([ds[0]], feature_names=list(PROFILE["point_features"]), voxel_size=(0.4, 0.4, 0.4),
                             point_cloud_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), max_points=64)
    ctx = StepContext(epoch=3, step=0, epoch_state={"beta": 0.9}, device=torch.device("cpu"))
    mask_cfg = MaskConfig(8, (3, 3, 2), 0.6, (0.9, 0.45, 0.0))
    with_teacher, logs = _step(model, batch, ctx, mask_cfg, seed=0)
    without, logs_off = _step(model, batch, ctx, mask_cfg, seed=0, teacher_targets=False)
    assert logs_off["loss_teacher"] > 0 and logs["loss_teacher"] == pytest.approx(logs_off["loss_teacher"])
    assert float(without) < float(with_teacher)  # the teacher term is gone
    losses = model(batch, masks_for_batch(batch, mask_cfg, 0, 3), beta=0.0)
    assert float(without) == pytest.approx(float((torch.tensor(ALPHA) * losses.points).mean()), rel=1e-5)


def test_cka_alpha_from_the_pipelines_fine_tuned_models(data, tmp_path) -> None:
    """`gpicture cka` reads the task models `gpicture finetune` writes (their `student.` weights)."""
    from gpicture.data.spec import NUSCENES
    from gpicture.tasks.segmentation import SegmentationConfig, SegmentationTask
    from gpicture.training.cka_alpha import cka_alpha, load_student
    from gpicture.training.finetune import FinetuneRun, finetune
    from gpicture.training.pretrain import build_pretrainer, save_student

    attrs = PretrainDataset(*data).attrs
    torch.manual_seed(0)
    pre = tmp_path / "student.pt"
    save_student(build_pretrainer(PROFILE, attrs, ALPHA).student, PROFILE, attrs, pre)
    run = FinetuneRun(NUSCENES, PROFILE, data[0], tmp_path / "seg", _train_cfg(3),
                      DistInfo(), init=pre, progress=False)
    finetune(SegmentationTask(), SegmentationConfig(), run)
    model = tmp_path / "seg" / "model.pt"
    student = load_student(model, attrs)
    state = torch.load(model, weights_only=False)["state"]
    torch.testing.assert_close(student.state_dict()["vfe.layers.0.linear.weight"],
                               state["student.vfe.layers.0.linear.weight"])
    alpha = cka_alpha(pre, [model], data[0], frames=1)
    assert len(alpha) == 8 and all(0.0 < a <= 1.0 + 1e-6 for a in alpha)
    assert min(alpha) < 0.999  # three epochs of fine-tuning moved some layer
    with pytest.raises(ValueError, match="not a gpicture student or fine-tuned model"):
        torch.save({"model_params": PROFILE, "weights": {}}, tmp_path / "other.pt")
        load_student(tmp_path / "other.pt", attrs)


def test_the_decoder_has_one_dsvt_stage_per_decoder_blocks_entry(data) -> None:
    from gpicture.training.pretrain import build_pretrainer

    attrs = PretrainDataset(*data).attrs
    one = build_pretrainer(PROFILE, attrs, ALPHA, decoder_blocks=(1,)).decoder
    two = build_pretrainer(PROFILE, attrs, ALPHA, decoder_blocks=(1, 1)).decoder  # the paper's table
    assert len(one.stages) == 1 and len(two.stages) == 2 and two.cfg.d_model == PROFILE["d_model"]


def test_frame_fraction_takes_whole_seeded_scenes() -> None:
    from gpicture.training.pretrain import scene_subset

    scenes = [f"seg{i // 4}" for i in range(40)]  # 10 segments of 4 frames
    frames = scene_subset(scenes, 0.2, seed=0)
    kept = {scenes[i] for i in frames}
    assert len(kept) == 2 and len(frames) == 8 and frames == sorted(frames)
    assert all(scenes[i] in kept for i in range(40) if i in frames)
    assert frames == scene_subset(scenes, 0.2, seed=0) and frames != scene_subset(scenes, 0.2, seed=3)
    assert scene_subset(scenes, 1.0, seed=0) == list(range(40))
