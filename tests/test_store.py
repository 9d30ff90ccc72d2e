"""The Zarr voxel store: round trip, layout, atomic writes, the torch Dataset."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from gpicture.data.batch import collate_frames
from gpicture.data.dataset import VoxelStoreDataset
from gpicture.data.store import StoreError, VoxelStore
from gpicture.data.store_writer import EncodedFrame, StoreWriter
from gpicture.data.voxelize import VoxelGrid

GRID = VoxelGrid((-10.0, -10.0, -2.0, 10.0, 10.0, 2.0), (0.5, 0.5, 0.25))


def make_frame(i: int, n: int, labelled: bool, occ: bool = False) -> EncodedFrame:
    rng = np.random.default_rng(i)
    pts = rng.uniform(-12, 12, (n, 3)).astype(np.float32)
    pts[:, 2] = rng.uniform(-2.5, 2.5, n)
    coords, pv = GRID.voxelize(pts)
    m = i + 1
    return EncodedFrame(
        frame_id=f"frame-{i}", scene=f"scene-{i // 2}", timestamp_us=1000 * i, pose=np.eye(4) * (i + 1),
        points=pts, features={"intensity": rng.uniform(0, 255, n).astype(np.float32), "time_lag": np.zeros(n, np.float32)},
        seg_labels=rng.integers(0, 32, n).astype(np.uint8) if labelled else None,
        voxel_coords=coords, point_voxel=pv,
        boxes=rng.normal(size=(m, 7)).astype(np.float32), box_names=np.array(["vehicle.car"] * m, dtype=object),
        box_velocity=rng.normal(size=(m, 2)).astype(np.float32), box_num_points=np.arange(m, dtype=np.int32),
        box_ids=np.array([f"inst-{i}-{k}" for k in range(m)], dtype=object), box_difficulty=np.zeros(m, np.int8),
        occupancy=np.array([[1, 2, 3, 4]] * (i + 1), np.int16) if occ else None,
    )


def write(path, frames, **kw) -> None:
    with StoreWriter(path, {"dataset": "test"}, ["intensity", "time_lag"], ["vehicle.car", "human.pedestrian.adult"],
                     flush_points=700, **kw) as w:
        for f in frames:
            w.append(f)
        w.commit()


def test_round_trip_every_field(tmp_path) -> None:
    frames = [make_frame(0, 500, False), make_frame(1, 800, True, occ=True), make_frame(2, 300, True)]
    write(tmp_path / "s.zarr", frames)
    store = VoxelStore.open(tmp_path / "s.zarr")
    assert len(store) == 3 and store.frame_ids == ["frame-0", "frame-1", "frame-2"]
    for i, want in enumerate(frames):
        got = store[i]
        np.testing.assert_array_equal(got.points, want.points)
        np.testing.assert_array_equal(got.features["intensity"], want.features["intensity"])
        np.testing.assert_array_equal(got.voxel_coords, want.voxel_coords)
        np.testing.assert_array_equal(got.point_voxel, want.point_voxel)
        np.testing.assert_array_equal(got.boxes, want.boxes)
        np.testing.assert_array_equal(got.box_velocity, want.box_velocity)
        np.testing.assert_array_equal(got.box_num_points, want.box_num_points)
        assert list(got.box_names) == list(want.box_names) and list(got.box_ids) == list(want.box_ids)
        expect_seg = want.seg_labels if want.seg_labels is not None else np.full(len(want.points), 255)
        np.testing.assert_array_equal(got.seg_labels, expect_seg)  # frame 0 back-filled with 255
        np.testing.assert_array_equal(got.pose, want.pose)
        assert got.scene == want.scene and got.timestamp_us == want.timestamp_us
    assert len(store[1].occupancy) == 2 and len(store[0].occupancy) == 0
    assert store[-1].frame_id == "frame-2"
    with pytest.raises(IndexError):
        store[3]


def test_layout_is_csr_chunked_and_zstd(tmp_path) -> None:
    write(tmp_path / "s.zarr", [make_frame(i, 400, True) for i in range(4)])
    meta = json.loads((tmp_path / "s.zarr" / "points" / "xyz" / "zarr.json").read_text())
    codecs = [c for c in meta["codecs"] if c["name"] == "blosc"]
    assert codecs and codecs[0]["configuration"]["cname"] == "zstd"
    assert meta["chunk_grid"]["configuration"]["chunk_shape"][1:] == [3]
    store = VoxelStore.open(tmp_path / "s.zarr")
    ptr = np.asarray(store._g["frames/point_ptr"][:])
    assert ptr.tolist() == [0, 400, 800, 1200, 1600]
    attrs = store.attrs
    assert attrs["complete"] is True and attrs["schema_version"] == 1 and attrs["n_points"] == 1600


def test_voxelize_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform(-11, 11, (2000, 3)).astype(np.float32)
    coords, pv = GRID.voxelize(pts)
    lo = np.array([-10.0, -10.0, -2.0])
    ijk = np.floor((pts.astype(np.float64) - lo) / [0.5, 0.5, 0.25]).astype(int)
    inside = (ijk >= 0).all(1) & (ijk < [40, 40, 16]).all(1)
    assert (pv[~inside] == -1).all() and (pv[inside] >= 0).all()
    np.testing.assert_array_equal(coords[pv[inside]], ijk[inside][:, ::-1])
    assert len(np.unique(coords, axis=0)) == len(coords)
    lin = (coords[:, 0] * 40 + coords[:, 1]) * 40 + coords[:, 2]
    assert (np.diff(lin) > 0).all()


def test_interrupted_write_leaves_nothing(tmp_path) -> None:
    with pytest.raises(RuntimeError):
        with StoreWriter(tmp_path / "s.zarr", {}, ["intensity", "time_lag"], ["vehicle.car"]) as w:
            w.append(make_frame(0, 100, True))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_and_incomplete_store_are_refused(tmp_path) -> None:
    write(tmp_path / "s.zarr", [make_frame(0, 100, True)])
    with pytest.raises(StoreError, match="output exists"):
        write(tmp_path / "s.zarr", [make_frame(0, 100, True)])
    write(tmp_path / "s.zarr", [make_frame(1, 100, True)], force=True)
    assert VoxelStore.open(tmp_path / "s.zarr").frame_ids == ["frame-1"]
    import zarr

    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    g.attrs["complete"] = False
    with pytest.raises(StoreError, match="incomplete store"):
        VoxelStore.open(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="not a voxel store"):
        VoxelStore.open(tmp_path / "nothing")


def test_dataset_in_dataloader_workers(tmp_path) -> None:
    write(tmp_path / "s.zarr", [make_frame(i, 300 + 50 * i, True) for i in range(6)])
    ds = VoxelStoreDataset(tmp_path / "s.zarr")
    collate = functools.partial(collate_frames, feature_names=ds.feature_names)
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate, shuffle=False)
    batches = list(loader)
    assert len(batches) == 2
    b = batches[1]
    assert b.batch_size == 3 and b.frame_index.tolist() == [3, 4, 5]
    assert ds.feature_names == ["intensity", "time_lag"] and b.features.shape == (len(b.points), 2)
    assert b.point_batch.tolist().count(0) == 450
    inside = b.point_voxel >= 0
    vc = b.voxel_coords[b.point_voxel[inside]]
    assert torch.equal(vc[:, 0].long(), b.point_batch[inside])  # each point's voxel is in its own frame
    ijk = torch.floor((b.points[inside].double() - torch.tensor([-10.0, -10.0, -2.0])) / torch.tensor([0.5, 0.5, 0.25]))
    assert torch.equal(vc[:, 1:].long(), ijk.long().flip(1))
    assert ds[5].boxes.shape == (6, 7)  # the items are whole StoreFrames; the batch core carries no boxes
