"""The Seal teacher: architecture, numerical parity with a dense reference, strict
checkpoint loading, and the per-voxel feature cache."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from gpicture.data.convert import ConvertConfig, convert
from gpicture.data.store import StoreError, VoxelStore
from gpicture.data.voxelize import VoxelGrid
from gpicture.synth.generate import SynthConfig, generate_nuscenes
from gpicture.teacher import SealTeacher
from gpicture.teacher.cache import TeacherConfig, TeacherStore, build_teacher_store, frame_batch_features
from gpicture.teacher.checkpoint import CheckpointError
from gpicture.teacher.res16unet import LAYERS, PLANES

# ----------------------------------------------------------------------------------------------
# A dense reference of Res16UNet34C, written from the architecture's definition (not from the
# sparse implementation): each sparse layer is a masked dense conv3d on the grid of its stride.
# MinkowskiEngine orders kernel offsets with the x offset fastest: k = dx + s*dy + s*s*dz.
# ----------------------------------------------------------------------------------------------


def _dense_kernel(w: torch.Tensor, size: int) -> torch.Tensor:
    """ME kernel (size**3, in, out) -> conv3d weight (out, in, x, y, z)."""
    return w.view(size, size, size, w.shape[1], w.shape[2]).permute(4, 3, 2, 1, 0)


def _bn(sd, name, x):  # noqa: ANN001, ANN202
    g = lambda k: sd[f"{name}.bn.{k}"].view(1, -1, 1, 1, 1)  # noqa: E731
    return (x - g("running_mean")) / torch.sqrt(g("running_var") + 1e-5) * g("weight") + g("bias")


def _sub3(sd, name, x, mask):  # noqa: ANN001, ANN202
    return F.conv3d(x, _dense_kernel(sd[f"{name}.kernel"], 3), padding=1) * mask


def _one(sd, name, x):  # noqa: ANN001, ANN202
    return torch.einsum("bixyz,io->boxyz", x, sd[f"{name}.kernel"])


def _block(sd, name, x, mask):  # noqa: ANN001, ANN202
    out = F.relu(_bn(sd, f"{name}.norm1", _sub3(sd, f"{name}.conv1", x, mask)) * mask)
    out = _bn(sd, f"{name}.norm2", _sub3(sd, f"{name}.conv2", out, mask)) * mask
    res = _bn(sd, f"{name}.downsample.1", _one(sd, f"{name}.downsample.0", x)) * mask if f"{name}.downsample.0.kernel" in sd else x
    return F.relu(out + res) * mask


def _stage(sd, name, n, x, mask):  # noqa: ANN001, ANN202
    for i in range(n):
        x = _block(sd, f"{name}.{i}", x, mask)
    return x


def dense_reference(sd: dict, coords: np.ndarray, feats: np.ndarray, grid: int) -> np.ndarray:
    """Res16UNet34C on one frame of voxels with coordinates in [0, grid)^3 (grid % 16 == 0)."""
    sd = {k: v.double() for k, v in sd.items()}
    x = torch.zeros(1, 1, grid, grid, grid, dtype=torch.float64)
    c = torch.as_tensor(coords, dtype=torch.long)
    x[0, :, c[:, 0], c[:, 1], c[:, 2]] = torch.as_tensor(feats, dtype=torch.float64).T
    masks = [torch.zeros(1, 1, grid, grid, grid, dtype=torch.float64)]
    masks[0][0, 0, c[:, 0], c[:, 1], c[:, 2]] = 1
    for _ in range(4):
        masks.append(F.max_pool3d(masks[-1], 2))

    def down(name, t, level):  # noqa: ANN001, ANN202
        y = F.conv3d(t, _dense_kernel(sd[f"{name}.kernel"], 2), stride=2) * masks[level + 1]
        return y

    def up(name, t, level):  # noqa: ANN001, ANN202
        w = _dense_kernel(sd[f"{name}.kernel"], 2).transpose(0, 1)  # (in, out, 2, 2, 2)
        return F.conv_transpose3d(t, w, stride=2) * masks[level - 1]

    m = masks
    p1 = F.relu(_bn(sd, "bn0", _sub3(sd, "conv0p1s1", x, m[0]))) * m[0]
    b1 = _stage(sd, "block1", LAYERS[0], F.relu(_bn(sd, "bn1", down("conv1p1s2", p1, 0))) * m[1], m[1])
    b2 = _stage(sd, "block2", LAYERS[1], F.relu(_bn(sd, "bn2", down("conv2p2s2", b1, 1))) * m[2], m[2])
    b3 = _stage(sd, "block3", LAYERS[2], F.relu(_bn(sd, "bn3", down("conv3p4s2", b2, 2))) * m[3], m[3])
    e = _stage(sd, "block4", LAYERS[3], F.relu(_bn(sd, "bn4", down("conv4p8s2", b3, 3))) * m[4], m[4])
    u = F.relu(_bn(sd, "bntr4", up("convtr4p16s2", e, 4))) * m[3]
    u = _stage(sd, "block5", LAYERS[4], torch.cat([u, b3], 1), m[3])
    u = F.relu(_bn(sd, "bntr5", up("convtr5p8s2", u, 3))) * m[2]
    u = _stage(sd, "block6", LAYERS[5], torch.cat([u, b2], 1), m[2])
    u = F.relu(_bn(sd, "bntr6", up("convtr6p4s2", u, 2))) * m[1]
    u = _stage(sd, "block7", LAYERS[6], torch.cat([u, b1], 1), m[1])
    u = F.relu(_bn(sd, "bntr7", up("convtr7p2s2", u, 1))) * m[0]
    u = _stage(sd, "block8", LAYERS[7], torch.cat([u, p1], 1), m[0])
    out = _one(sd, "final", u) + sd["final.bias"].view(1, -1, 1, 1, 1)
    rows = out[0, :, c[:, 0], c[:, 1], c[:, 2]].T
    return (rows / rows.norm(dim=1, keepdim=True)).numpy()


def _randomised_teacher(seed: int = 0) -> SealTeacher:
    t = SealTeacher.from_checkpoint(None, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-trivial batch-norm statistics, so every term of the network matters
        for name, buf in t.net.state_dict().items():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) * 0.5 + 0.75)
            elif name.endswith("bn.weight"):
                buf.copy_(torch.rand(buf.shape, generator=g) * 0.5 + 0.75)
            elif name.endswith("bn.bias"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
    return t


def test_state_dict_has_the_seal_layout() -> None:
    sd = SealTeacher.from_checkpoint(None).net.state_dict()
    assert len(sd) == 374
    n_params = sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert abs(n_params / 1e6 - 37.85) < 0.05
    keys = list(sd)
    assert keys[0] == "conv0p1s1.kernel" and tuple(sd["conv0p1s1.kernel"].shape) == (27, 1, 32)
    assert tuple(sd["final.kernel"].shape) == (96, 64) and tuple(sd["final.bias"].shape) == (1, 64)
    assert tuple(sd["convtr4p16s2.kernel"].shape) == (8, 256, 256)
    assert tuple(sd["block5.0.downsample.0.kernel"].shape) == (256 + 128, PLANES[4])
    assert "block1.0.downsample.0.kernel" not in sd and "block8.1.norm2.bn.running_var" in sd


def test_teacher_equals_the_dense_reference() -> None:
    t = _randomised_teacher()
    rng = np.random.default_rng(0)
    # a surface-like cloud: a plane and a box in a 32^3 grid
    pts = {(x, y, 3) for x in range(32) for y in range(32) if rng.random() < 0.5}
    pts |= {(x, y, z) for x, y, z in itertools.product(range(10, 16), range(12, 20), range(3, 12)) if rng.random() < 0.4}
    xyz = np.array(sorted(pts), dtype=np.int32)
    feats = rng.random((len(xyz), 1)).astype(np.float32)
    got = t.encode(np.column_stack([np.zeros(len(xyz), np.int32), xyz]), feats)
    want = dense_reference(t.net.state_dict(), xyz, feats, 32)
    assert np.abs(got - want).max() < 1e-4
    # one voxel translated by a multiple of 16 changes nothing; the batch index separates frames
    both = np.concatenate([np.column_stack([np.zeros(len(xyz)), xyz]), np.column_stack([np.ones(len(xyz)), xyz + 16])])
    out2 = t.encode(both.astype(np.int32), np.concatenate([feats, feats]))
    assert np.abs(out2[: len(xyz)] - got).max() < 1e-5 and np.abs(out2[len(xyz):] - got).max() < 1e-5


@pytest.mark.parametrize("container", [None, "state_dict", "model_points"])
@pytest.mark.parametrize("prefix", ["", "model_points.", "model.", "module.", "encoder.", "module.encoder."])
def test_checkpoint_containers_and_prefixes_load(tmp_path, container, prefix) -> None:
    src = _randomised_teacher(seed=3)
    weights = {prefix + k: v for k, v in src.net.state_dict().items()}
    obj = weights if container is None else {container: weights, "epoch": 7}
    path = tmp_path / "seal.pth"
    torch.save(obj, path)
    t = SealTeacher.from_checkpoint(path)
    assert not t.is_random and len(t.sha256) == 64
    coords = np.array([[0, 0, 0, 0], [0, 1, 0, 0], [0, 5, 5, 1]], np.int32)
    f = np.array([[0.1], [0.5], [0.9]], np.float32)
    np.testing.assert_allclose(t.encode(coords, f), src.encode(coords, f), atol=1e-6)


def test_wrong_layout_is_refused_with_every_key_listed(tmp_path) -> None:
    sd = dict(SealTeacher.from_checkpoint(None).net.state_dict())
    del sd["block3.2.conv1.kernel"]
    sd["head.weight"] = torch.zeros(3)
    sd["final.kernel"] = torch.zeros(96, 20)
    torch.save({"state_dict": sd}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as exc:
        SealTeacher.from_checkpoint(tmp_path / "bad.pt")
    msg = str(exc.value)
    assert "bad.pt" in msg and "missing 1: block3.2.conv1.kernel" in msg
    assert "unexpected 1: head.weight" in msg and "mismatched 1: final.kernel: (96, 20) (expected (96, 64))" in msg


def test_corrupt_checkpoint_is_refused(tmp_path) -> None:
    (tmp_path / "broken.pth").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(CheckpointError, match="broken.pth: not a readable PyTorch checkpoint"):
        SealTeacher.from_checkpoint(tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        SealTeacher.from_checkpoint(tmp_path / "absent.pth")


# ----------------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("teacher")
    generate_nuscenes(SynthConfig(scenes=3, frames=2, sweeps_before=2, seed=4, occupancy=False, workers=2), root / "raw")
    grid = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.4, 0.4, 0.4))
    convert(ConvertConfig("nuscenes", root / "raw", "mini_train", grid, sweeps=3), root / "s.zarr")
    return root / "s.zarr"


CFG = TeacherConfig(input_scale=1 / 255, batch_frames=2)


def test_cache_aligns_with_the_source_voxels(store, tmp_path) -> None:
    t = SealTeacher.from_checkpoint(None)
    summary = build_teacher_store(store, tmp_path / "t.zarr", t, CFG)
    src = VoxelStore.open(store)
    ts = TeacherStore.open(tmp_path / "t.zarr", source=src)
    assert summary["complete"] and summary["voxels"] == src.n_voxels and len(ts) == len(src)
    assert ts.attrs["settings"]["random_init"] is True and ts.attrs["settings"]["checkpoint_sha256"] is None
    assert ts.attrs["settings"]["teacher_voxel_size"] == 0.2
    fr = src[1]
    feats, valid = ts.frame(1)
    assert feats.shape == (len(fr.voxel_coords), 64)
    key_vox = np.unique(fr.point_voxel[(fr.features["time_lag"] == 0) & (fr.point_voxel >= 0)])
    assert set(np.nonzero(valid)[0]) == set(key_vox)  # exactly the voxels with keyframe points
    direct, dvalid = frame_batch_features(t, [fr], CFG)[0]  # batching does not change a frame's features
    np.testing.assert_array_equal(dvalid, valid)
    np.testing.assert_allclose(feats[valid], direct[valid], atol=2e-3)  # float16 storage


def test_int8_option_keeps_the_features(store, tmp_path) -> None:
    t = SealTeacher.from_checkpoint(None)
    build_teacher_store(store, tmp_path / "f.zarr", t, CFG)
    build_teacher_store(store, tmp_path / "q.zarr", t, TeacherConfig(input_scale=1 / 255, dtype="int8"))
    a, va = TeacherStore.open(tmp_path / "f.zarr").frame(0)
    b, _ = TeacherStore.open(tmp_path / "q.zarr").frame(0)
    cos = (a[va] * b[va]).sum(1) / np.linalg.norm(a[va], axis=1) / np.linalg.norm(b[va], axis=1)
    assert cos.min() > 0.999


def test_interrupted_run_resumes_and_matches(store, tmp_path) -> None:
    t = SealTeacher.from_checkpoint(None)
    out = tmp_path / "t.zarr"
    first = build_teacher_store(store, out, t, TeacherConfig(input_scale=1 / 255, batch_frames=1), stop_after=1)
    assert first == {"frames": 1, "complete": False}
    assert not out.exists() and (tmp_path / ".t.zarr.partial").exists()
    with pytest.raises(StoreError, match="incomplete teacher store"):
        TeacherStore.open(tmp_path / ".t.zarr.partial")
    second = build_teacher_store(store, out, t, TeacherConfig(input_scale=1 / 255, batch_frames=1))
    assert second["resumed_from"] == 1 and not (tmp_path / ".t.zarr.partial").exists()
    build_teacher_store(store, tmp_path / "ref.zarr", t, TeacherConfig(input_scale=1 / 255, batch_frames=1))
    for i in range(len(VoxelStore.open(store))):
        # MinkowskiEngine's multithreaded sums may differ in the last float16 bit between runs
        np.testing.assert_allclose(TeacherStore.open(out).frame(i)[0], TeacherStore.open(tmp_path / "ref.zarr").frame(i)[0],
                                   atol=1e-3)


def test_stale_and_incomplete_sources_are_refused(store, tmp_path) -> None:
    import shutil

    import zarr

    t = SealTeacher.from_checkpoint(None)
    build_teacher_store(store, tmp_path / "t.zarr", t, CFG)
    with pytest.raises(StoreError, match="output exists"):
        build_teacher_store(store, tmp_path / "t.zarr", t, CFG)
    other = tmp_path / "other.zarr"
    shutil.copytree(store, other)
    g = zarr.open_group(str(other), mode="r+")
    g.attrs["source_fingerprint"] = "0" * 64  # a store rebuilt from other raw data
    with pytest.raises(StoreError, match="another source store"):
        TeacherStore.open(tmp_path / "t.zarr", source=VoxelStore.open(other))
    g.attrs["complete"] = False
    with pytest.raises(StoreError, match="incomplete store"):
        build_teacher_store(other, tmp_path / "t2.zarr", t, CFG)
    assert not (tmp_path / "t2.zarr").exists() and not (tmp_path / ".t2.zarr.partial").exists()


def test_cli_says_random_and_refuses_a_bad_checkpoint(store, tmp_path) -> None:
    from typer.testing import CliRunner

    from stages.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["teacher", "--store", str(store), "--out", str(tmp_path / "t.zarr"), "--init", "random"])
    assert r.exit_code == 0, r.output
    assert "RANDOM INITIALISATION" in r.output and "complete True" in r.output
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    r = runner.invoke(app, ["teacher", "--store", str(store), "--out", str(tmp_path / "u.zarr"),
                            "--checkpoint", str(tmp_path / "bad.pth")])
    assert r.exit_code == 2 and "bad.pth: not a readable PyTorch checkpoint" in r.output
    assert not (tmp_path / "u.zarr").exists() and not (tmp_path / ".u.zarr.partial").exists()
