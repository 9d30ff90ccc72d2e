"""`gpicture convert`: stores built from generated raw data read back exactly as the
official tools read the raw data; shards, merge, and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.data_classes import LidarPointCloud
from typer.testing import CliRunner

from gpicture.data.convert import ConvertConfig, convert, merge_stores
from gpicture.data.store import StoreError, VoxelStore
from gpicture.data.voxelize import VoxelGrid
from gpicture.synth.generate import SynthConfig, generate_nuscenes, generate_waymo
from stages.cli import app

NUS_GRID = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.4, 0.4, 0.4))
WAYMO_GRID = VoxelGrid((-74.88, -74.88, -2.0, 74.88, 74.88, 4.0), (0.64, 0.64, 0.375))
FIXTURES = Path(__file__).resolve().parent / "fixtures"
runner = CliRunner()


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    generate_nuscenes(SynthConfig(scenes=3, frames=3, sweeps_before=4, seed=2, workers=2), root / "nuscenes")
    generate_waymo(SynthConfig(scenes=2, frames=2, seed=2, workers=2), root / "waymo")
    return root


@pytest.fixture(scope="module")
def nus_store(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "nus_val.zarr"
    cfg = ConvertConfig("nuscenes", raw / "nuscenes", "mini_val", NUS_GRID, sweeps=10, workers=2)
    summary = convert(cfg, out)
    assert summary["frames"] == 6 and summary["dropped_nonfinite_points"] == 0
    return out


def test_nuscenes_store_equals_the_devkit(raw, nus_store) -> None:
    nusc = NuScenes("v1.0-mini", str(raw / "nuscenes"), verbose=False)
    store = VoxelStore.open(nus_store)
    assert store.attrs["dataset"] == "nuscenes" and store.attrs["sweeps"] == 10
    assert store.attrs["voxel_size"] == [0.4, 0.4, 0.4] and store.attrs["source_fingerprint"]
    for i in (0, 4):
        fr = store[i]
        sample = nusc.get("sample", fr.frame_id)
        pc, times = LidarPointCloud.from_file_multisweep(nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=10)
        np.testing.assert_allclose(fr.points, pc.points[:3].T, atol=1e-5)
        np.testing.assert_allclose(fr.features["intensity"], pc.points[3], atol=1e-6)
        np.testing.assert_allclose(fr.features["time_lag"], times[0], atol=1e-6)
        sd = sample["data"]["LIDAR_TOP"]
        _, boxes, _ = nusc.get_sample_data(sd)
        assert len(fr.boxes) == len(boxes)
        np.testing.assert_allclose(fr.boxes[:, :3], [b.center for b in boxes], atol=1e-4)
        np.testing.assert_allclose(fr.boxes[:, 3:6], [[b.wlh[1], b.wlh[0], b.wlh[2]] for b in boxes], atol=1e-5)
        np.testing.assert_allclose(fr.boxes[:, 6], [b.orientation.yaw_pitch_roll[0] for b in boxes], atol=1e-5)
        assert list(fr.box_names) == [nusc.get("sample_annotation", b.token)["category_name"] for b in boxes]
        # lidarseg: the keyframe's labels (after the devkit's remove_close) then 255 for sweep points
        labels = np.fromfile(raw / "nuscenes" / nusc.get("lidarseg", sd)["filename"], dtype=np.uint8)
        key = LidarPointCloud.from_file(str(raw / "nuscenes" / nusc.get("sample_data", sd)["filename"]))
        keep = ~((np.abs(key.points[0]) < 1.0) & (np.abs(key.points[1]) < 1.0))
        n_key = int(keep.sum())
        np.testing.assert_array_equal(fr.seg_labels[:n_key], labels[keep])
        assert (fr.seg_labels[n_key:] == 255).all()
        # canonical voxelization
        inside = fr.point_voxel >= 0
        ijk = np.floor((fr.points[inside].astype(np.float64) - [-51.2, -51.2, -5.0]) / 0.4).astype(int)
        np.testing.assert_array_equal(fr.voxel_coords[fr.point_voxel[inside]], ijk[:, ::-1])
        assert fr.occupancy is not None and fr.occupancy.shape[1] == 4


def test_waymo_store_equals_the_official_decoder(tmp_path) -> None:
    root = tmp_path / "waymo"
    (root / "training").mkdir(parents=True)
    shutil.copy(FIXTURES / "waymo_reference.tfrecord", root / "training" / "segment-reference.tfrecord")
    convert(ConvertConfig("waymo", root, "training", WAYMO_GRID), tmp_path / "w.zarr")
    fr = VoxelStore.open(tmp_path / "w.zarr")[0]
    ref = np.load(FIXTURES / "waymo_reference.npz")
    want = np.concatenate([ref[f"points_{laser}_{r}"] for laser in range(1, 6) for r in (1, 2)])
    np.testing.assert_allclose(fr.points, want, atol=1e-4)
    polar = np.concatenate([ref[f"polar_{laser}_{r}"] for laser in range(1, 6) for r in (1, 2)])
    np.testing.assert_array_equal(fr.features["intensity"], polar[:, 1])
    np.testing.assert_array_equal(fr.features["elongation"], polar[:, 2])
    assert set(np.unique(fr.features["laser"])) == {1, 2, 3, 4, 5}


def test_waymo_boxes_and_labels(raw, tmp_path) -> None:
    convert(ConvertConfig("waymo", raw / "waymo", "training", WAYMO_GRID), tmp_path / "w.zarr")
    store = VoxelStore.open(tmp_path / "w.zarr")
    assert len(store) == 2
    fr = store[0]
    assert set(fr.box_names) <= {"TYPE_VEHICLE", "TYPE_PEDESTRIAN", "TYPE_CYCLIST"} and len(fr.boxes) >= 10
    assert fr.seg_labels is not None and (fr.seg_labels[fr.features["laser"] != 1] == 255).all()
    assert (fr.seg_labels[fr.features["laser"] == 1] < 23).all()
    assert fr.box_difficulty.min() >= 1 and np.isfinite(fr.box_velocity).all()


def test_shards_merge_to_the_whole(raw, nus_store, tmp_path) -> None:
    shards = []
    for i in range(3):
        cfg = ConvertConfig("nuscenes", raw / "nuscenes", "mini_val", NUS_GRID, sweeps=10, shard=(i, 3))
        convert(cfg, tmp_path / f"shard{i}.zarr")
        shards.append(tmp_path / f"shard{i}.zarr")
    assert [len(VoxelStore.open(p)) for p in shards] == [2, 2, 2]
    with pytest.raises(StoreError, match="need every shard"):
        merge_stores(shards[:2], tmp_path / "partial.zarr")
    merge_stores(shards[::-1], tmp_path / "merged.zarr")
    whole, merged = VoxelStore.open(nus_store), VoxelStore.open(tmp_path / "merged.zarr")
    assert merged.frame_ids == whole.frame_ids
    for i in range(len(whole)):
        a, b = whole[i], merged[i]
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.point_voxel, b.point_voxel)
        np.testing.assert_array_equal(a.seg_labels, b.seg_labels)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.occupancy, b.occupancy)


def _cli_convert(*args: str):  # noqa: ANN202
    return runner.invoke(app, ["convert", *args])


def test_cli_errors_name_the_file_and_leave_no_store(raw, tmp_path) -> None:
    # output exists
    out = tmp_path / "exists.zarr"
    out.mkdir()
    r = _cli_convert("nuscenes", "--split", "val", "--root", str(raw / "nuscenes"), "--out", str(out))
    assert r.exit_code == 2 and "output exists" in r.output
    # missing table
    broken = tmp_path / "nus"
    shutil.copytree(raw / "nuscenes", broken, symlinks=True)
    (broken / "v1.0-mini" / "sample.json").unlink()
    r = _cli_convert("nuscenes", "--split", "val", "--root", str(broken), "--out", str(tmp_path / "a.zarr"))
    assert r.exit_code == 2 and "sample.json" in r.output and "missing nuScenes table" in r.output
    # CRC-corrupt and truncated tfrecords
    for kind in ("corrupt", "truncated"):
        root = tmp_path / kind
        shutil.copytree(raw / "waymo", root)
        seg = sorted((root / "training").glob("*.tfrecord"))[0]
        data = bytearray(seg.read_bytes())
        if kind == "corrupt":
            data[len(data) // 2] ^= 0xFF
        else:
            data = data[: len(data) - 1000]
        seg.write_bytes(bytes(data))
        r = _cli_convert("waymo", "--split", "train", "--root", str(root), "--out", str(tmp_path / f"{kind}.zarr"))
        assert r.exit_code == 2, r.output
        assert seg.name in r.output and ("CRC" in r.output or "truncated" in r.output)
    leftovers = [p.name for p in tmp_path.iterdir() if p.suffix == ".zarr" or ".tmp-" in p.name]
    assert leftovers == ["exists.zarr"]


def test_cli_convert_writes_a_store(raw, tmp_path) -> None:
    r = _cli_convert("waymo", "--split", "val", "--root", str(raw / "waymo"), "--out", str(tmp_path / "v.zarr"),
                     "--workers", "1")
    assert r.exit_code == 0, r.output
    assert "frames 2" in r.output
    assert VoxelStore.open(tmp_path / "v.zarr").attrs["split"] == "validation"
