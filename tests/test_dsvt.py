"""The DSVT student: set partitions, order invariance, gradients, pooling, BEV, VFE."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch
import yaml

from gpicture.models.dsvt import DSVTConfig, DSVTEncoder
from gpicture.models.dsvt.layers import SetAttentionLayer
from gpicture.models.dsvt.partition import assign_windows, partition_sets
from gpicture.models.student import Student, StudentConfig
from gpicture.models.vfe import DynamicVFE

SHAPE = (40, 36, 8)  # x, y, z


def random_coords(n: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.stack([torch.randint(0, batch, (n,), generator=g), torch.randint(0, SHAPE[2], (n,), generator=g),
                     torch.randint(0, SHAPE[1], (n,), generator=g), torch.randint(0, SHAPE[0], (n,), generator=g)], 1)
    return torch.unique(c, dim=0).int()


@pytest.mark.parametrize("window,shift", [((12, 12, 8), (0, 0, 0)), ((24, 24, 8), (6, 6, 0)), ((5, 7, 3), (2, 3, 1))])
@pytest.mark.parametrize("axis", ["x", "y"])
@pytest.mark.parametrize("set_size", [4, 36])
def test_set_partition_follows_its_definition(window, shift, axis, set_size) -> None:
    coords = random_coords(1500)
    a = assign_windows(coords, SHAPE, window, shift)
    part = partition_sets(a, window, set_size, axis)
    assert part.voxel.shape == (part.num_sets, set_size)  # every set is full, never larger
    # Rebuild the expected sets window by window (the test may loop; the code may not).
    xyz = np.stack([coords[:, 3], coords[:, 2], coords[:, 1]], 1) + np.array(shift)
    by_window = defaultdict(list)
    for v, (b, p) in enumerate(zip(coords[:, 0].tolist(), xyz.tolist(), strict=True)):
        w = tuple(c // s for c, s in zip(p, window, strict=True))
        inner = tuple(c % s for c, s in zip(p, window, strict=True))
        key = (inner[0], inner[1], inner[2]) if axis == "x" else (inner[1], inner[0], inner[2])
        by_window[(b, *w)].append((key, v))
    expected = []
    for _, members in sorted(by_window.items(), key=lambda kv: (kv[0][0], kv[0][3], kv[0][2], kv[0][1])):
        ordered = [v for _, v in sorted(members)]
        n = len(ordered)
        k = -(-n // set_size)
        for local in range(k):
            expected.append([ordered[(local * set_size + p) * n // (k * set_size)] for p in range(set_size)])
    assert part.voxel.tolist() == expected
    # windows: all slots of a set share one window, and every window of a voxel has sets
    win_of_slot = a.win_id[part.voxel]
    assert (win_of_slot == win_of_slot[:, :1]).all()
    assert set(part.set_window.tolist()) == set(range(len(torch.unique(a.win_id))))
    # every voxel appears once as "first", padding marks exactly the in-set repeats
    firsts = part.voxel[part.first]
    assert sorted(firsts.tolist()) == list(range(len(coords)))
    dup = torch.zeros_like(part.pad_mask)
    dup[:, 1:] = part.voxel[:, 1:] == part.voxel[:, :-1]
    assert torch.equal(dup, part.pad_mask)


def small_config() -> DSVTConfig:
    return DSVTConfig(sparse_shape=SHAPE, d_model=32, nhead=4, dim_feedforward=48, set_size=8,
                      window_shapes=((12, 12, 8), (12, 12, 2), (12, 12, 1)), blocks=(2, 1, 1),
                      z_strides=((1, 1, 4), (1, 1, 2)))


def test_output_does_not_depend_on_voxel_order() -> None:
    torch.manual_seed(0)
    enc = DSVTEncoder(small_config()).eval()
    coords = random_coords(800)
    feats = torch.randn(len(coords), 32)
    perm = torch.randperm(len(coords))
    with torch.no_grad():
        a = enc(feats, coords)
        b = enc(feats[perm], coords[perm])
    torch.testing.assert_close(a.per_input_voxel()[perm], b.per_input_voxel(), atol=1e-5, rtol=1e-5)
    for layer in range(len(a.activations)):
        torch.testing.assert_close(a.per_input_voxel(layer)[perm], b.per_input_voxel(layer), atol=1e-5, rtol=1e-5)
    assert len(a.activations) == small_config().num_layers == 8


def test_pooling_maps_voxels_to_their_cells() -> None:
    enc = DSVTEncoder(small_config())
    coords = random_coords(600)
    out = enc(torch.randn(len(coords), 32), coords)
    pooled = out.coords[out.to_input].long()
    want = coords.long() // torch.tensor([1, 8, 1, 1])  # z strides 4 then 2
    assert torch.equal(pooled, want)
    assert out.sparse_shape == (40, 36, 1)
    bev = DSVTEncoder.bev(out, 2)
    assert bev.shape == (2, 32, 36, 40)
    c = out.coords[5].long()
    torch.testing.assert_close(bev[c[0], :, c[2], c[3]], out.features[5])


@pytest.mark.parametrize("set_size", [4, 36])
def test_per_voxel_set_attention_equals_the_multihead_module_on_the_slots(set_size) -> None:
    """The projections per voxel (not per set slot) give nn.MultiheadAttention's outputs and
    gradients on the gathered slots, with repeats masked and each voxel written back once."""
    torch.manual_seed(3)
    coords = random_coords(700)
    part = partition_sets(assign_windows(coords, SHAPE, (12, 12, 8), (6, 6, 0)), (12, 12, 8), set_size, "x")
    layer = SetAttentionLayer(32, 4, 64).train()
    x = torch.randn(len(coords), 32, requires_grad=True)
    q_in = x + torch.randn(len(coords), 32)
    fast, ref = layer.set_attention(x, q_in, part), layer.attention_reference(x, q_in, part)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-4)
    assert fast.abs().sum(1).gt(0).all()  # every voxel got its update
    g_fast = torch.autograd.grad(fast.square().sum(), [x, layer.attn.in_proj_weight, layer.attn.out_proj.weight])
    g_ref = torch.autograd.grad(ref.square().sum(), [x, layer.attn.in_proj_weight, layer.attn.out_proj.weight])
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_encoder_restricted_to_output_rows_equals_the_full_pass_there() -> None:
    """``out_rows`` (the pre-training decoder's masked voxels) computes the last layer on the
    sets and rows that matter only: the same features and gradients at those rows."""
    torch.manual_seed(4)
    cfg = DSVTConfig(sparse_shape=SHAPE, d_model=32, nhead=4, dim_feedforward=48, set_size=8,
                     window_shapes=((12, 12, 8),), blocks=(1,), z_strides=())
    enc = DSVTEncoder(cfg).train()
    coords = random_coords(900)
    x = torch.randn(len(coords), 32, requires_grad=True)
    rows = torch.rand(len(coords)) < 0.1
    full = enc(x, coords).features
    part = enc(x, coords, out_rows=rows).features
    torch.testing.assert_close(part[rows], full[rows], atol=1e-5, rtol=1e-4)
    g_full = torch.autograd.grad(full[rows].square().sum(), [x, *enc.parameters()], allow_unused=True)
    g_part = torch.autograd.grad(part[rows].square().sum(), [x, *enc.parameters()], allow_unused=True)
    for a, b in zip(g_part, g_full, strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(1)
    cfg = StudentConfig(point_features=("intensity",), vfe_filters=(32, 32), voxel_size=(0.5, 0.5, 0.5),
                        point_cloud_range=(0, 0, 0, 20, 18, 4), dsvt=small_config())
    model = Student(cfg)
    pts = torch.rand(5000, 3) * torch.tensor([20, 18, 4])
    ijk = (pts / 0.5).floor().long()
    key = ijk[:, 2] * 10000 + ijk[:, 1] * 100 + ijk[:, 0]
    uniq, pv = torch.unique(key, return_inverse=True)
    coords = torch.stack([torch.zeros_like(uniq), uniq // 10000, (uniq // 100) % 100, uniq % 100], 1).int()
    out = model(pts, torch.rand(5000, 1), pv, coords)
    loss = model.bev(out, 1).square().mean() + sum(a.square().mean() for a in out.activations)
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_encoder_on_a_subset_ignores_the_dropped_voxels() -> None:
    torch.manual_seed(2)
    cfg = StudentConfig(point_features=("intensity",), vfe_filters=(32, 32), voxel_size=(0.5, 0.5, 0.5),
                        point_cloud_range=(0, 0, 0, 20, 18, 4), dsvt=small_config())
    model = Student(cfg).eval()
    pts = torch.rand(3000, 3) * torch.tensor([20, 18, 4])
    ijk = (pts / 0.5).floor().long()
    uniq, pv = torch.unique(ijk[:, 2] * 10000 + ijk[:, 1] * 100 + ijk[:, 0], return_inverse=True)
    coords = torch.stack([torch.zeros_like(uniq), uniq // 10000, (uniq // 100) % 100, uniq % 100], 1).int()
    feats = torch.rand(3000, 1)
    keep = torch.rand(len(coords)) < 0.4
    with torch.no_grad():
        a = model(pts, feats, pv, coords, keep=keep)
        feats2 = feats.clone()
        feats2[~keep[pv]] = 99.0  # change only the points of dropped voxels
        b = model(pts, feats2, pv, coords, keep=keep)
    torch.testing.assert_close(a.features, b.features)
    assert len(a.to_input) == int(keep.sum())


def test_vfe_is_local_to_each_voxel() -> None:
    torch.manual_seed(3)
    vfe = DynamicVFE(1, (1.0, 1.0, 1.0), (0, 0, 0, 10, 10, 10), (16, 16)).eval()
    pts = torch.tensor([[0.2, 0.2, 0.2], [0.8, 0.5, 0.1], [3.5, 3.5, 3.5]])
    coords = torch.tensor([[0, 0, 0, 0], [0, 3, 3, 3]], dtype=torch.int32)
    pv = torch.tensor([0, 0, 1])
    f = vfe(pts, torch.ones(3, 1), pv, coords)
    pts2 = pts.clone()
    pts2[2] = torch.tensor([3.1, 3.9, 3.2])
    f2 = vfe(pts2, torch.ones(3, 1), pv, coords)
    torch.testing.assert_close(f[0], f2[0])
    assert not torch.allclose(f[1], f2[1])
    # a voxel's feature is the max over its points of the last PFN layer
    assert f.shape == (2, 16) and (f >= 0).all()


@pytest.mark.parametrize("dataset", ["nuscenes", "waymo"])
@pytest.mark.parametrize("profile", ["small", "full"])
def test_params_profiles_build(repo_root, dataset, profile) -> None:
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    p = params["model"]["profiles"][profile][dataset]
    conv = params["convert"][dataset]
    grid = {"voxel_size": p.get("voxel_size", conv["voxel_size"]),
            "point_cloud_range": p.get("point_cloud_range", conv["point_cloud_range"])}
    lo, hi = np.array(grid["point_cloud_range"][:3]), np.array(grid["point_cloud_range"][3:])
    nx, ny, nz = np.round((hi - lo) / np.array(grid["voxel_size"])).astype(int)
    cfg = StudentConfig.from_params(p, {**grid, "grid_shape_zyx": [nz, ny, nx]})
    model = Student(cfg)
    assert cfg.dsvt.num_layers == 8
    if profile == "full":
        assert cfg.dsvt.sparse_shape == ((512, 512, 40) if dataset == "nuscenes" else (468, 468, 32))
        assert cfg.dsvt.d_model == (256 if dataset == "nuscenes" else 192) and cfg.dsvt.set_size == 48
    assert model.bev_channels == cfg.dsvt.d_model * (2 if (profile, dataset) == ("full", "nuscenes") else 1)
    with pytest.raises(ValueError, match="convert the data"):
        StudentConfig.from_params({**p, "voxel_size": [9, 9, 9]}, {**grid, "grid_shape_zyx": [nz, ny, nx]})
