"""A real operation with each heavy dependency, as the pipeline will use it."""

from __future__ import annotations

import subprocess

import numpy as np
import torch


def test_minkowski_sparse_conv_forward_backward() -> None:
    from gpicture.compat import import_minkowski

    ME = import_minkowski()  # noqa: N806
    torch.manual_seed(0)
    coords = torch.randint(0, 8, (200, 3), dtype=torch.int32)
    coords = torch.unique(coords, dim=0)
    coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), coords], 1)
    feats = torch.randn(len(coords), 3, requires_grad=True)
    x = ME.SparseTensor(feats, coordinates=coords)
    conv = ME.MinkowskiConvolution(3, 5, kernel_size=3, stride=1, dimension=3)
    y = conv(x)
    assert y.F.shape == (len(coords), 5)
    y.F.square().sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert conv.kernel.grad is not None and conv.kernel.grad.shape == conv.kernel.shape
    # A lone voxel sees only itself: its output is feats @ kernel[centre].
    lone = ME.SparseTensor(torch.ones(1, 3), coordinates=torch.tensor([[0, 50, 50, 50]], dtype=torch.int32))
    out = conv(lone).F.detach()
    centre = conv.kernel.shape[0] // 2
    assert torch.allclose(out, torch.ones(1, 3) @ conv.kernel[centre].detach(), atol=1e-5)


def test_spconv_submanifold_conv_cpu() -> None:
    import spconv.pytorch as spconv

    from gpicture.compat import spconv_algo

    torch.manual_seed(0)
    coords = torch.unique(torch.randint(0, 16, (300, 3), dtype=torch.int32), dim=0)
    coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), coords], 1)
    feats = torch.randn(len(coords), 4)
    conv = spconv.SubMConv3d(4, 6, 3, bias=False, algo=spconv_algo())
    y = conv(spconv.SparseConvTensor(feats, coords, [16, 16, 16], 1))
    # Submanifold: same active sites, same order.
    assert torch.equal(y.indices, coords)
    assert y.features.shape == (len(coords), 6)
    # Check one site against a dense computation of the same kernel.
    w = conv.weight.detach()  # (out, k, k, k, in) in spconv 2.x
    dense = torch.zeros(16 + 2, 16 + 2, 16 + 2, 4)
    c = coords[:, 1:].long() + 1
    dense[c[:, 0], c[:, 1], c[:, 2]] = feats
    z, yy, xx = c[0].tolist()
    patch = dense[z - 1 : z + 2, yy - 1 : yy + 2, xx - 1 : xx + 2]  # (3, 3, 3, in)
    expect = torch.einsum("abci,oabci->o", patch, w)
    assert torch.allclose(y.features[0], expect, atol=1e-4)


def test_torch_scatter_segment_csr() -> None:
    import torch_scatter

    src = torch.randn(10, 3)
    indptr = torch.tensor([0, 3, 3, 7, 10])
    out = torch_scatter.segment_csr(src, indptr, reduce="max")
    assert torch.allclose(out[0], src[:3].max(0).values)
    assert torch.allclose(out[2], src[3:7].max(0).values)
    assert torch.equal(out[1], torch.zeros(3))  # empty segment


def test_waymo_frame_proto_round_trip() -> None:
    from waymo_open_dataset import dataset_pb2, label_pb2

    frame = dataset_pb2.Frame()
    frame.context.name = "segment-test"
    frame.timestamp_micros = 1_550_000_000_000_000
    lab = frame.laser_labels.add()
    lab.id = "obj0"
    lab.type = label_pb2.Label.TYPE_PEDESTRIAN
    lab.box.center_x, lab.box.length, lab.box.heading = 3.5, 0.8, 0.25
    lab.num_lidar_points_in_box = 42
    laser = frame.lasers.add()
    laser.name = dataset_pb2.LaserName.TOP
    laser.ri_return1.range_image_compressed = bytes(range(256))
    data = frame.SerializeToString()
    back = dataset_pb2.Frame.FromString(data)
    assert back == frame
    assert back.laser_labels[0].num_lidar_points_in_box == 42
    assert back.lasers[0].ri_return1.range_image_compressed == bytes(range(256))


def test_zarr_blosc_zstd_round_trip(tmp_path) -> None:
    import zarr
    from zarr.codecs import BloscCodec

    data = np.random.default_rng(0).normal(size=(5000, 3)).astype(np.float32)
    arr = zarr.create_array(
        store=str(tmp_path / "pts.zarr"),
        shape=data.shape,
        chunks=(1024, 3),
        dtype=data.dtype,
        compressors=BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle"),
    )
    arr[:] = data
    back = zarr.open_array(str(tmp_path / "pts.zarr"), mode="r")
    assert back.compressors[0].cname.value == "zstd"
    np.testing.assert_array_equal(back[:], data)
    assert len(list((tmp_path / "pts.zarr" / "c").iterdir())) == 5  # chunked along the first axis


def test_nuscenes_devkit_importable() -> None:
    from nuscenes.nuscenes import NuScenes
    from nuscenes.utils.splits import create_splits_scenes

    assert callable(NuScenes)
    splits = create_splits_scenes()
    assert len(splits["train"]) == 700 and len(splits["val"]) == 150


def test_dvc_runs_from_the_venv(venv_bin, tmp_path) -> None:
    dvc = venv_bin / "dvc"
    assert dvc.exists(), f"{dvc} missing: dvc is not installed in the project venv"
    out = subprocess.run([str(dvc), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip()[0].isdigit()
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([str(dvc), "init", "-q"], cwd=tmp_path, check=True)
    assert (tmp_path / ".dvc" / "config").exists()
