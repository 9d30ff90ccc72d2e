"""`gpicture teacher-fit`: the stand-in's pool is disjoint from the pipeline's scenes, its
objective is Seal's InfoNCE over segments, and a real checkpoint is handed on unchanged."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from gpicture.data.convert import ConvertConfig, convert
from gpicture.data.voxelize import VoxelGrid
from gpicture.synth.generate import SynthConfig, generate_nuscenes, scene_seed
from gpicture.teacher import SealTeacher
from gpicture.teacher.cache import TeacherConfig, TeacherStore
from gpicture.teacher.checkpoint import read_checkpoint
from gpicture.teacher.res16unet import Res16UNet34C
from gpicture.teacher.voxels import quantize_points, teacher_voxels
from gpicture.training.teacher_fit import (
    FitConfig,
    Targets,
    augment_sector,
    sample_points,
    fit_standin,
    infonce,
    segment_keys,
    segment_targets,
)
from gpicture.training.teacher_pool import POOL_TAG, PoolConfig, pool_tokens, simulate_pool
from stages.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _params(tmp_path: Path, **teacher) -> Path:
    """The repository's params with the teacher section overridden (a tiny stand-in)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    std = params["teacher"]["standin"]
    std.update(steps=2, crop_deg=30.0)
    std["pool"].update(scenes=1, frames=1, workers=1)
    params["teacher"].update(teacher)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fit")
    generate_nuscenes(SynthConfig(scenes=3, frames=1, sweeps_before=0, seed=0, occupancy=False, workers=1), root / "raw")
    grid = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.4, 0.4, 0.4))
    convert(ConvertConfig("nuscenes", root / "raw", "mini_train", grid, sweeps=1), root / "s.zarr")
    return root / "s.zarr"


def test_pool_shares_no_scene_seed_or_token_with_the_pipeline(store) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    pool = PoolConfig(**{k: v for k, v in params["teacher"]["standin"]["pool"].items() if k != "workers"})
    pool_seeds = set(pool.scene_seeds())
    # Every scene the pipeline can draw (any synth seed 0..99, up to 1000 scenes of either dataset) ...
    pipeline_seeds = {scene_seed(s, ds, k) for s in range(100) for ds in ("nuscenes", "waymo") for k in range(1000)}
    assert len(pool_seeds) == pool.scenes and not pool_seeds & pipeline_seeds
    # ... and the scenes actually written: seeds (in the descriptions), scene and sample tokens.
    raw = store.parent / "raw" / "v1.0-mini"
    scenes = json.loads((raw / "scene.json").read_text())
    written_seeds = {int(re.search(r"seed (\d+)", s["description"]).group(1)) for s in scenes}
    assert written_seeds == {scene_seed(0, "nuscenes", k) for k in range(3)}  # the descriptions are the real seeds
    tokens = pool_tokens(pool)
    assert not {s["token"] for s in scenes} & set(tokens["scene_tokens"])
    assert not {s["token"] for s in json.loads((raw / "sample.json").read_text())} & set(tokens["sample_tokens"])
    assert not {s["name"] for s in scenes} & set(pool.scene_names())
    assert POOL_TAG not in ("nuscenes", "waymo")


def test_pool_frames_carry_labels_and_instances() -> None:
    frames = simulate_pool(PoolConfig(scenes=1, frames=2))
    assert len(frames) == 2
    for fr in frames:
        n = len(fr.points)
        assert fr.intensity.shape == fr.labels.shape == fr.instance.shape == (n,)
        assert fr.intensity.max() > 1.0  # raw 0..255, as nuScenes writes it
        assert (fr.labels > 0).mean() > 0.9 and (fr.instance > 0).any()
        # instances are objects: each one holds a single class
        inst = fr.instance[fr.instance > 0]
        lab = fr.labels[fr.instance > 0]
        pairs = np.unique(np.column_stack([inst, lab]), axis=0)
        assert len(pairs) == len(np.unique(inst))


def test_cylindrical_voxels_follow_slidr() -> None:
    pts = np.array([[10.0, 0.0, 0.05], [10.04, 0.0, 0.05], [0.0, 10.0, 0.0], [-10.0, -0.01, -0.2]], np.float32)
    q = quantize_points(pts, 0.1, "cylindrical", 1.0)
    np.testing.assert_array_equal(q[:, 0], [100, 100, 100, 100])  # radius / 0.1 m
    np.testing.assert_array_equal(q[:, 1], [0, 0, 90, -180])  # azimuth in 1 degree bins
    np.testing.assert_array_equal(q[:, 2], [0, 0, 0, -2])
    tv = teacher_voxels(pts, np.array([10.0, 20.0, 30.0, 40.0]), 0.1, "cylindrical")
    assert len(tv.coords) == 3 and tv.features[tv.point_voxel[0], 0] == 15.0  # the voxel's mean input


def test_segments_and_targets() -> None:
    pts = np.array([[1.0, 1.0, 0], [1.5, 1.2, 0], [9.0, 1.0, 0], [3.0, 3.0, 0], [3.1, 3.0, 0], [30.0, 0, 0]], np.float32)
    labels = np.array([11, 11, 11, 1, 1, 1])  # road, road (another cell), car, car
    instance = np.array([0, 0, 0, 7, 7, 8])
    keys = segment_keys(pts, labels, instance, scene=0, stuff_cell=4.0)
    assert keys[0] == keys[1] != keys[2]  # one road piece per 4 m cell
    assert keys[3] == keys[4] != keys[5]  # one segment per car
    uniq, first = np.unique(keys, return_index=True)
    t = segment_targets(uniq, labels[first], Targets.make(16, 0), perturbation=0.3)
    assert torch.allclose(t.norm(dim=1), torch.ones(len(t)))
    sim = t @ t.T
    cls = labels[first]
    same = (cls[:, None] == cls[None]) & ~np.eye(len(cls), dtype=bool)
    assert sim[torch.from_numpy(same)].min() > 0.8 > sim[torch.from_numpy(cls[:, None] != cls[None])].max()
    assert sim[torch.from_numpy(same)].max() < 0.999  # instances of a class stay distinguishable


def test_balanced_sampling_gives_each_class_an_equal_share() -> None:
    rng = np.random.default_rng(0)
    cls = np.repeat([1, 11, 15], [50, 20000, 5000])  # a rare object class beside two large stuff classes
    uniform = cls[sample_points(cls, 600, rng, balanced=False)]
    balanced = cls[sample_points(cls, 600, rng, balanced=True)]
    assert (uniform == 1).sum() < 10
    counts = np.bincount(balanced, minlength=16)[[1, 11, 15]]
    assert counts.min() > 150  # each class about a third (with replacement: the 50 rare points repeat)
    assert len(np.unique(sample_points(cls, 600, rng, balanced=False))) == 600  # without replacement
    assert len(sample_points(cls[:30], 600, rng, balanced=False)) == 30  # uniform: all, when fewer
    assert len(sample_points(cls[:30], 600, rng, balanced=True)) == 600


def test_object_centred_sector_holds_an_object_of_each_class_in_turn() -> None:
    frame = simulate_pool(PoolConfig(scenes=1, frames=1))[0]
    things = frame.instance > 0
    classes = set(np.unique(frame.labels[things]).tolist())
    assert len(classes) >= 2
    rng = np.random.default_rng(0)
    seen: set[int] = set()
    for _ in range(60):
        pts, keep = augment_sector(frame.points, frame.labels, frame.instance, rng, FitConfig(crop_deg=20.0,
                                                                                      crop_centre="object"))
        assert np.allclose(np.linalg.norm(pts[:, :2], axis=1), np.linalg.norm(frame.points[:, :2], axis=1), atol=1e-3)
        assert 0 < keep.mean() < 0.2
        assert things[keep].any()  # the sector is centred on an object point
        seen |= set(np.unique(frame.labels[keep & things]).tolist())
    assert seen == classes  # classes are drawn uniformly, not by point count
    _, keep = augment_sector(frame.points, frame.labels, frame.instance, rng, FitConfig(crop_deg=360.0))
    assert keep.all()
    with pytest.raises(ValueError, match="crop_centre"):
        FitConfig(crop_centre="car").validate()


def test_infonce_is_minimal_when_each_segment_matches_its_target() -> None:
    tgt = torch.nn.functional.normalize(torch.randn(5, 64), dim=1)
    seg = torch.arange(5).repeat_interleave(3)
    matched = infonce(tgt[seg], seg, tgt, 0.07)
    shuffled = infonce(tgt[seg.roll(3)], seg, tgt, 0.07)
    assert matched < 0.05 < shuffled


def test_fit_lowers_the_loss_and_keeps_seals_layout() -> None:
    frames = simulate_pool(PoolConfig(scenes=1, frames=2))
    torch.manual_seed(0)
    net = Res16UNet34C(1, 64, bn_momentum=0.05)
    tcfg = TeacherConfig(voxel_size=0.1, coordinates="cylindrical")
    res = fit_standin(net, frames, 16, tcfg, FitConfig(steps=12, crop_deg=30.0, lr=2e-3))
    assert len(res.losses) == 12 and np.isfinite(res.losses).all()
    assert np.mean(res.losses[-3:]) < np.mean(res.losses[:3])
    fresh = Res16UNet34C(1, 64, bn_momentum=0.05)
    fresh.load_state_dict(res.state_dict, strict=True)


def test_cli_hands_a_seal_checkpoint_on_unchanged_and_features_match(store, tmp_path) -> None:
    torch.manual_seed(3)
    seal = tmp_path / "seal.pth"
    torch.save({"model_points": {f"model_points.{k}": v for k, v in Res16UNet34C(1, 64).state_dict().items()}}, seal)
    params = _params(tmp_path)
    r = runner.invoke(app, ["teacher-fit", "--dataset", "nuscenes", "--out", str(tmp_path / "t" / "nuscenes"),
                            "--checkpoint", str(seal), "--params", str(params)])
    assert r.exit_code == 0, r.output
    out = tmp_path / "t" / "nuscenes"
    assert (out / "teacher.pt").read_bytes() == seal.read_bytes()  # handed on byte for byte, nothing trained
    meta = json.loads((out / "teacher.json").read_text())
    assert meta["init"] == "checkpoint" and "train_seconds" not in meta and meta["source"] == str(seal)
    for ckpt, name in ((seal, "a.zarr"), (out / "teacher.pt", "b.zarr")):
        r = runner.invoke(app, ["teacher", "--store", str(store), "--out", str(tmp_path / name),
                                "--checkpoint", str(ckpt), "--params", str(params)])
        assert r.exit_code == 0, r.output
    a, b = TeacherStore.open(tmp_path / "a.zarr"), TeacherStore.open(tmp_path / "b.zarr")
    assert len(a) == len(b) >= 1
    for i in range(len(a)):
        for x, y in zip(a.frame(i), b.frame(i), strict=True):
            np.testing.assert_array_equal(x, y)
    # Waymo shares the nuScenes teacher: handed on unchanged too.
    r = runner.invoke(app, ["teacher-fit", "--dataset", "waymo", "--out", str(tmp_path / "t" / "waymo"),
                            "--params", str(params)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "t" / "waymo" / "teacher.pt").read_bytes() == seal.read_bytes()
    assert json.loads((tmp_path / "t" / "waymo" / "teacher.json").read_text())["shared_from"] == "nuscenes"


def test_cli_trains_the_standin_and_every_stage_says_so(store, tmp_path) -> None:
    params = _params(tmp_path)
    r = runner.invoke(app, ["teacher", "--store", str(store), "--out", str(tmp_path / "x.zarr"), "--params", str(params)])
    assert r.exit_code == 2 and "gpicture teacher-fit --dataset nuscenes" in r.output  # no silent random teacher
    out = tmp_path / "standin"
    r = runner.invoke(app, ["teacher-fit", "--dataset", "nuscenes", "--out", str(out), "--params", str(params)])
    assert r.exit_code == 0, r.output
    assert "stand-in teacher (trained on synthetic pool, 1 scenes)" in r.output
    weights, meta = read_checkpoint(out / "teacher.pt")
    assert meta["init"] == "standin" and meta["pool_scenes"] == 1 and "vision foundation model" in meta["objective"]
    assert meta["input_convention"] == {"voxel_size": 0.1, "coordinates": "cylindrical", "angle_bin_deg": 1.0}
    t = SealTeacher.from_checkpoint(out / "teacher.pt")  # the strict loader takes it
    assert t.kind == "standin" and not t.is_random
    r = runner.invoke(app, ["teacher", "--store", str(store), "--out", str(tmp_path / "s.zarr"),
                            "--checkpoint", str(out / "teacher.pt"), "--params", str(params)])
    assert r.exit_code == 0 and "stand-in teacher (trained on synthetic pool, 1 scenes)" in r.output, r.output
    settings = TeacherStore.open(tmp_path / "s.zarr").settings
    assert settings["teacher_kind"] == "standin" and not settings["random_init"]
    assert "stand-in teacher" in settings["teacher_description"]
    # A checkpoint trained with another voxelization is refused, naming both.
    (tmp_path / "o").mkdir()
    other = _params(tmp_path / "o", voxel_size=0.2)
    r = runner.invoke(app, ["teacher", "--store", str(store), "--out", str(tmp_path / "o.zarr"),
                            "--checkpoint", str(out / "teacher.pt"), "--params", str(other)])
    assert r.exit_code == 2 and "trained with the teacher voxelization" in r.output
    r = runner.invoke(app, ["teacher-fit", "--dataset", "nuscenes", "--out", str(out), "--params", str(params)])
    assert r.exit_code == 2 and "output exists" in r.output
