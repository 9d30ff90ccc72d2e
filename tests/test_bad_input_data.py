"""Bad input where data enters (`gpicture convert`, the readers, the voxel store): NaN / inf by
policy, refusals of broken tables, label files, segments and stores. Every CLI case asserts the
exit code, that the message names the file, and that nothing is left at --out."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from nuscenes.nuscenes import NuScenes
from typer.testing import CliRunner
from waymo_open_dataset import dataset_pb2

from gpicture.data.convert import ConvertConfig, _fields, convert
from gpicture.data.finite import NonFinitePolicy
from gpicture.data.nuscenes_reader import occupancy_path, split_sample_tokens
from gpicture.data.store import StoreError, VoxelStore
from gpicture.data.store_writer import EncodedFrame, StoreWriter
from gpicture.data.voxelize import VoxelGrid
from gpicture.data.waymo.matrix_codec import decode_matrix_float, encode_matrix_float
from gpicture.data.waymo.tfrecord import iter_records, write_records
from gpicture.synth.generate import SynthConfig, generate_nuscenes, generate_waymo
from stages.cli import app

ROOT = Path(__file__).resolve().parents[1]
VERSION = "v1.0-mini"
NUS_GRID = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.4, 0.4, 0.4))
runner = CliRunner()


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    generate_nuscenes(SynthConfig(scenes=3, frames=2, sweeps_before=1, seed=3, workers=2), root / "nuscenes")
    generate_waymo(SynthConfig(scenes=2, frames=2, seed=3, workers=2), root / "waymo")
    return root


@pytest.fixture(scope="module")
def nusc(raw) -> NuScenes:
    return NuScenes(version=VERSION, dataroot=str(raw / "nuscenes"), verbose=False)


def _link_copy(src: Path, dst: Path) -> Path:
    """A copy whose files are symlinks to the originals (:func:`_replace` one to alter it)."""
    shutil.copytree(src, dst, copy_function=os.symlink)
    return dst


def _replace(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def _edit_table(root: Path, table: str, edit) -> Path:  # noqa: ANN001
    """Rewrite ``<root>/v1.0-mini/<table>.json`` through ``edit(records)`` (NaN allowed, as Python writes it)."""
    path = root / VERSION / f"{table}.json"
    records = json.loads(path.read_text())
    edit(records)
    _replace(path, json.dumps(records).encode())
    return path


def _keyframe(nusc: NuScenes) -> tuple[dict, dict]:
    """(sample, LIDAR_TOP sample_data) of the first keyframe of the val split (what `--split val` reads)."""
    sample = nusc.get("sample", split_sample_tokens(nusc, "mini_val")[0])
    return sample, nusc.get("sample_data", sample["data"]["LIDAR_TOP"])


def _convert(*args: str, out: Path, params: Path | None = None, workers: int = 1):  # noqa: ANN202
    extra = ["--params", str(params)] if params else []
    return runner.invoke(app, ["convert", *args, "--out", str(out), "--workers", str(workers), *extra])


def _nus(root: Path, out: Path, *args: str, params: Path | None = None, workers: int = 1):  # noqa: ANN202
    return _convert("nuscenes", "--split", "val", "--root", str(root), *args, out=out, params=params, workers=workers)


def _waymo(root: Path, out: Path, *args: str, params: Path | None = None):  # noqa: ANN202
    return _convert("waymo", "--split", "train", "--root", str(root), *args, out=out, params=params)


def _refused(result, out: Path, *named: str) -> None:  # noqa: ANN001
    """Exit 2, one `error:` message naming everything in ``named``, nothing at or beside ``out``."""
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "Traceback" not in result.output, result.output
    for name in named:
        assert name in result.output, (name, result.output)
    assert not [p.name for p in out.parent.iterdir() if out.name in p.name]  # no store, no .X.zarr.tmp-*


def _params(tmp_path: Path, **convert_keys) -> Path:  # noqa: ANN003
    """A copy of params.yaml with ``convert`` keys replaced."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["convert"].update(convert_keys)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


# ---------------------------------------------------------------------------------------------
# NaN points: dropped and counted by default, refused by policy
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def nan_intensity(raw, nusc, tmp_path) -> tuple[Path, Path, int]:
    """A nuScenes copy whose val keyframe has 5 NaN intensities and 2 infinite rings."""
    _, sd = _keyframe(nusc)
    copy = _link_copy(raw / "nuscenes", tmp_path / "nus")
    scan = np.fromfile(copy / sd["filename"], dtype=np.float32).reshape(-1, 5).copy()
    far = np.flatnonzero(np.abs(scan[:, 0]) > 2)  # not removed by remove_close anyway
    scan[far[:5], 3] = np.nan
    scan[far[10:12], 4] = np.inf
    _replace(copy / sd["filename"], scan.tobytes())
    return copy, copy / sd["filename"], 7


def test_nan_intensity_is_dropped_with_a_logged_count(nan_intensity, tmp_path) -> None:
    copy, _, n_bad = nan_intensity
    out = tmp_path / "val.zarr"
    r = _nus(copy, out)
    assert r.exit_code == 0, r.output
    assert f"dropped {n_bad} points with a non-finite coordinate or feature" in r.output
    assert str(copy) in r.output  # the log names the root
    store = VoxelStore.open(out)
    assert store.attrs["dropped_nonfinite_points"] == n_bad
    assert store.attrs["nonfinite_policy"]["points"] == "drop"
    for i in range(len(store)):
        fr = store[i]
        assert all(np.isfinite(v).all() for v in fr.features.values()) and np.isfinite(fr.points).all()


@pytest.mark.parametrize("how", ["params", "option"])
def test_nan_intensity_with_policy_error_stops_at_convert(nan_intensity, tmp_path, how) -> None:
    copy, bin_path, n_bad = nan_intensity
    out = tmp_path / "val.zarr"
    if how == "params":
        nonfinite = {"points": "error", "labels": "error", "boxes": "error", "poses": "error"}
        r = _nus(copy, out, params=_params(tmp_path, nonfinite=nonfinite))
    else:  # through the worker processes: the message survives the pool
        r = _nus(copy, out, "--nonfinite-points", "error", workers=2)
    _refused(r, out, str(bin_path), f"{n_bad} of", "non-finite")


def test_policy_rejects_unknown_choices(raw, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"convert.nonfinite.boxes: 'drop'"):
        NonFinitePolicy.from_params({"boxes": "drop"})
    with pytest.raises(ValueError, match="unknown keys"):
        NonFinitePolicy.from_params({"pointz": "drop"})
    out = tmp_path / "val.zarr"
    r = _nus(raw / "nuscenes", out, params=_params(tmp_path, nonfinite={"points": "ignore"}))
    _refused(r, out, "convert.nonfinite.points")


@pytest.mark.parametrize("table, key, named", [
    ("ego_pose", "translation", "ego_pose.json"),
    ("calibrated_sensor", "rotation", "calibrated_sensor.json"),
    ("sample_annotation", "size", "sample_annotation.json"),
])
def test_nonfinite_pose_or_box_is_refused(raw, nusc, tmp_path, table, key, named) -> None:
    sample, sd = _keyframe(nusc)
    token = {"ego_pose": sd["ego_pose_token"], "calibrated_sensor": sd["calibrated_sensor_token"],
             "sample_annotation": sample["anns"][0]}[table]

    def poison(records: list[dict]) -> None:
        rec = next(r for r in records if r["token"] == token)
        rec[key][1] = float("nan")

    copy = _link_copy(raw / "nuscenes", tmp_path / "nus")
    _edit_table(copy, table, poison)
    out = tmp_path / "val.zarr"
    _refused(_nus(copy, out), out, named, token, "non-finite")


# ---------------------------------------------------------------------------------------------
# The store refuses non-finite values it reads; the writer refuses a frame id twice
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store_path(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store") / "val.zarr"
    convert(ConvertConfig("nuscenes", raw / "nuscenes", "mini_val", NUS_GRID, sweeps=1), out)
    return out


@pytest.mark.parametrize("array, field", [("points/feat/intensity", "features 'intensity'"),
                                          ("points/xyz", "points"), ("boxes/box", "boxes"),
                                          ("frames/pose", "pose")])
def test_store_refuses_a_tampered_frame(store_path, tmp_path, array, field) -> None:
    path = tmp_path / "tampered.zarr"
    shutil.copytree(store_path, path)
    store = VoxelStore.open(path)
    ok = store[0]
    a = zarr.open_group(str(path), mode="r+")[array]
    row = {"points": len(ok.points) + 3, "boxes": len(ok.boxes) + 1, "frames": 1}[array.split("/")[0]]
    values = a[row]
    a[row] = np.full_like(values, np.inf if array == "boxes/box" else np.nan)
    store = VoxelStore.open(path)
    np.testing.assert_array_equal(store[0].points, ok.points)  # the other frames read as before
    fid = store.frame_ids[1]
    with pytest.raises(StoreError, match=rf"{path}: frame 1 \({fid}\): \d+ non-finite values in {field}"):
        store[1]
    if array == "boxes/box":
        with pytest.raises(StoreError, match=rf"{path}: frame 1 \({fid}\)"):
            store.frame_boxes(1)
    if array == "frames/pose":
        with pytest.raises(StoreError, match=rf"{path}: frame 1 \({fid}\)"):
            store.pose(1)


def test_nan_box_velocity_is_unknown_not_refused(store_path, tmp_path) -> None:
    path = tmp_path / "v.zarr"
    shutil.copytree(store_path, path)
    a = zarr.open_group(str(path), mode="r+")["boxes/velocity"]
    a[0] = np.nan
    assert np.isnan(VoxelStore.open(path)[0].box_velocity[0]).all()


def test_writer_refuses_a_frame_id_twice(store_path, tmp_path) -> None:
    store = VoxelStore.open(store_path)
    frame = EncodedFrame(**_fields(store[0]))
    out = tmp_path / "dup.zarr"
    with pytest.raises(StoreError, match=rf"{out}: frame '{frame.frame_id}' .*given twice"):
        with StoreWriter(out, dict(store.attrs), store.feature_names, list(store.box_classes)) as w:
            w.append(frame)
            w.append(EncodedFrame(**_fields(store[1])))
            w.append(frame)
    assert not [p.name for p in tmp_path.iterdir() if out.name in p.name]


# ---------------------------------------------------------------------------------------------
# Waymo: a segment twice, an empty segment, NaN in a range image or pose
# ---------------------------------------------------------------------------------------------


def _waymo_copy(raw: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    root = tmp_path / "waymo"
    shutil.copytree(raw / "waymo", root)
    return root, sorted((root / "training").glob("segment-*.tfrecord"))


def test_a_segment_given_twice_is_refused(raw, tmp_path) -> None:
    root, segs = _waymo_copy(raw, tmp_path)
    twin = segs[0].with_name("segment-copy-of-the-first.tfrecord")
    shutil.copy(segs[0], twin)
    out = tmp_path / "w.zarr"
    _refused(_waymo(root, out), out, twin.name, segs[0].name, "twice")
    # the same frames in other bytes (records reordered): the store writer refuses the frame id
    records = list(iter_records(segs[0]))
    write_records(twin, records[::-1])
    frame = dataset_pb2.Frame.FromString(records[-1])
    _refused(_waymo(root, out), out, f"frame '{frame.context.name}/{frame.timestamp_micros}'", "given twice")


def test_an_empty_segment_is_refused_or_skipped(raw, tmp_path) -> None:
    root, segs = _waymo_copy(raw, tmp_path)
    empty = root / "training" / "segment-empty.tfrecord"
    empty.write_bytes(b"")
    out = tmp_path / "w.zarr"
    _refused(_waymo(root, out), out, str(empty), "empty Waymo segment")
    r = _waymo(root, out, "--empty-segments", "skip")
    assert r.exit_code == 0, r.output
    assert "skipped 1 empty (0-byte) Waymo segments: segment-empty.tfrecord" in r.output
    store = VoxelStore.open(out)
    assert store.attrs["skipped_segments"] == 1 and store.attrs["skipped_segment_files"] == [empty.name]
    assert len(store) == sum(len(list(iter_records(s))) for s in segs)
    out2 = tmp_path / "w2.zarr"
    r = _waymo(root, out2, params=_params(tmp_path, empty_segments="skip"))
    assert r.exit_code == 0 and VoxelStore.open(out2).attrs["skipped_segments"] == 1


def _rewrite_first_frame(seg: Path, edit) -> None:  # noqa: ANN001
    records = list(iter_records(seg))
    frame = dataset_pb2.Frame.FromString(records[0])
    edit(frame)
    records[0] = frame.SerializeToString()
    write_records(seg, records)


def _nan_intensity(frame: dataset_pb2.Frame) -> None:
    ri = frame.lasers[0].ri_return1
    image = decode_matrix_float(ri.range_image_compressed).copy()
    rows, cols = np.nonzero(image[..., 0] > 0)
    image[rows[:4], cols[:4], 1] = np.nan  # 4 returns with a NaN intensity
    ri.range_image_compressed = encode_matrix_float(image, 1)


def test_nan_in_a_range_image_is_dropped_or_refused(raw, tmp_path) -> None:
    root, segs = _waymo_copy(raw, tmp_path)
    _rewrite_first_frame(segs[0], _nan_intensity)
    out = tmp_path / "w.zarr"
    r = _waymo(root, out)
    assert r.exit_code == 0, r.output
    assert "dropped 4 points with a non-finite coordinate or feature" in r.output
    assert VoxelStore.open(out).attrs["dropped_nonfinite_points"] == 4
    out2 = tmp_path / "w2.zarr"
    _refused(_waymo(root, out2, "--nonfinite-points", "error"), out2, f"{segs[0]}: record 0", "4 of")


def test_nan_frame_pose_or_box_is_refused(raw, tmp_path) -> None:
    root, segs = _waymo_copy(raw, tmp_path)

    def nan_pose(frame: dataset_pb2.Frame) -> None:
        frame.pose.transform[3] = float("nan")

    _rewrite_first_frame(segs[0], nan_pose)
    out = tmp_path / "w.zarr"
    _refused(_waymo(root, out), out, f"{segs[0]}: record 0", "Frame.pose")

    root2, segs2 = _waymo_copy(raw, tmp_path / "b")

    def inf_box(frame: dataset_pb2.Frame) -> None:
        frame.laser_labels[0].box.length = float("inf")

    _rewrite_first_frame(segs2[-1], inf_box)
    _refused(_waymo(root2, out), out, f"{segs2[-1]}: record 0", "non-finite box")


# ---------------------------------------------------------------------------------------------
# nuScenes: labels, label files, tokens, tables, occupancy
# ---------------------------------------------------------------------------------------------


def test_lidarseg_index_outside_the_table(raw, nusc, tmp_path) -> None:
    _, sd = _keyframe(nusc)
    rel = nusc.get("lidarseg", sd["token"])["filename"]
    copy = _link_copy(raw / "nuscenes", tmp_path / "nus")
    labels = np.fromfile(copy / rel, dtype=np.uint8).copy()
    labels[3] = 200
    _replace(copy / rel, labels.tobytes())
    out = tmp_path / "val.zarr"
    _refused(_nus(copy, out), out, str(copy / rel), "class index 200", "category.json")


def test_missing_lidarseg_file(raw, nusc, tmp_path) -> None:
    _, sd = _keyframe(nusc)
    rel = nusc.get("lidarseg", sd["token"])["filename"]
    copy = _link_copy(raw / "nuscenes", tmp_path / "nus")
    (copy / rel).unlink()
    out = tmp_path / "val.zarr"
    _refused(_nus(copy, out), out, str(copy / rel), "missing lidarseg label file", "lidarseg.json")


@pytest.mark.parametrize("field, table", [("calibrated_sensor_token", "calibrated_sensor"),
                                          ("ego_pose_token", "ego_pose")])
def test_dangling_token(raw, nusc, tmp_path, field, table) -> None:
    _, sd = _keyframe(nusc)

    def dangle(records: list[dict]) -> None:
        next(r for r in records if r["token"] == sd["token"])[field] = "no-such-token"

    copy = _link_copy(raw / "nuscenes", tmp_path / "nus")
    _edit_table(copy, "sample_data", dangle)
    out = tmp_path / "val.zarr"
    # calibrated_sensor: the devkit's own index fails (in sample_data.json); ego_pose: the reader's lookup
    _refused(_nus(copy, out), out, "'no-such-token'", f"{table}.json", sd["token"], "dangling token")


def test_truncated_sample_data_json(raw, tmp_path) -> None:
    copy = _link_copy(raw / "nuscenes", tmp_path / "nus")
    path = copy / VERSION / "sample_data.json"
    _replace(path, path.read_bytes()[: path.stat().st_size // 2])
    out = tmp_path / "val.zarr"
    _refused(_nus(copy, out), out, str(path), "not a valid JSON table")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "bad label", "off the grid", "float nan"])
def test_corrupt_occupancy_file(raw, nusc, tmp_path, damage) -> None:
    sample, _ = _keyframe(nusc)
    rel = occupancy_path(nusc, sample).relative_to(raw / "nuscenes")
    copy = _link_copy(raw / "nuscenes", tmp_path / "nus")
    path = copy / rel
    data = path.read_bytes()
    rows = np.load(path)
    if damage == "truncated":
        _replace(path, data[: len(data) // 2])
    elif damage == "garbage":
        _replace(path, b"\x00garbage" * 10)
    else:
        rows = rows.astype(np.float32) if damage == "float nan" else rows.copy()
        rows[0, {"bad label": 3, "off the grid": 1, "float nan": 0}[damage]] = {
            "bad label": 99, "off the grid": 600, "float nan": np.nan}[damage]
        path.unlink()
        np.save(path, rows)
    out = tmp_path / "val.zarr"
    _refused(_nus(copy, out), out, str(path))
