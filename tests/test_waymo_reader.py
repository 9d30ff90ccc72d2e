"""The Waymo reader (no TensorFlow): points against the official decoder's, labels, errors.

``fixtures/waymo_reference.{tfrecord,npz}`` were made once by
``fixtures/make_waymo_reference.py`` with ``frame_utils.convert_range_image_to_point_cloud``
(TensorFlow); see that script for what the record holds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from waymo_open_dataset import dataset_pb2, label_pb2
from waymo_segmentation import decode_segmentation

from gpicture.data.frame import EmptyFrameError, RawFrame
from gpicture.data.waymo.frame import decode_range_image
from gpicture.data.waymo.matrix_codec import decode_matrix_float, encode_matrix_float
from gpicture.data.waymo.reader import frame_refs, read_frame, segment_files
from gpicture.data.waymo.tfrecord import (
    TFRecordError,
    iter_records,
    read_record,
    record_offsets,
    write_records,
)
from gpicture.synth.generate import SynthConfig, generate_waymo

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFERENCE_RECORD = FIXTURES / "waymo_reference.tfrecord"
REFERENCE = FIXTURES / "waymo_reference.npz"
TOP, FRONT = dataset_pb2.LaserName.TOP, dataset_pb2.LaserName.FRONT


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def reference_proto() -> dataset_pb2.Frame:
    (record,) = list(iter_records(REFERENCE_RECORD))
    return dataset_pb2.Frame.FromString(record)


@pytest.fixture(scope="module")
def reference_frame() -> RawFrame:
    return read_frame(REFERENCE_RECORD, 0)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("waymo") / "data"
    generate_waymo(SynthConfig(scenes=1, frames=2), root)
    return root


def _blocks(reference: dict[str, np.ndarray]) -> list[tuple[int, int, str]]:
    """(laser, return index, npz key suffix) in the reader's documented order."""
    return [(int(laser), r, f"{int(laser)}_{r + 1}") for laser in reference["laser_order"] for r in (0, 1)]


def read_proto(path: Path, index: int = 0) -> dataset_pb2.Frame:
    return dataset_pb2.Frame.FromString(list(iter_records(path))[index])


def _write_frame(path: Path, frame: dataset_pb2.Frame) -> Path:
    write_records(path, [frame.SerializeToString()])
    return path


# --------------------------------------------------------------------------- against the official decoder


def test_fixture_exercises_order_and_nlz(reference, reference_proto) -> None:
    assert reference["laser_order"].tolist() == [1, 2, 3, 4, 5]  # official: calibrations sorted by name
    meta = json.loads(str(reference["meta"]))
    assert meta["official_point_dtype"] == ["float32"]
    # the record itself is not in laser-name order
    assert [c.name for c in reference_proto.context.laser_calibrations] != [1, 2, 3, 4, 5]
    assert [laser.name for laser in reference_proto.lasers] != [1, 2, 3, 4, 5]
    assert (reference["nlz_1_1"] == 1).any() and (reference["nlz_1_1"] == -1).any()
    assert len(reference["points_1_2"]) > 0 and len(reference["points_4_2"]) > 0  # second returns


def test_points_match_the_official_decoder(reference, reference_frame) -> None:
    f = reference_frame
    start = 0
    for laser, r, key in _blocks(reference):
        want = reference[f"points_{key}"]
        n = len(want)
        block = slice(start, start + n)
        assert np.all(f.features["laser"][block] == laser), key
        assert np.all(f.features["return_index"][block] == r), key
        np.testing.assert_allclose(f.points[block], want, atol=1e-4, rtol=0, err_msg=key)
        start += n
    assert start == len(f.points)
    assert f.points.dtype == np.float32
    assert f.extra["dropped_nonfinite"] == 0


def test_features_match_the_official_polar_features(reference, reference_frame) -> None:
    f = reference_frame
    assert set(f.features) == {"intensity", "elongation", "return_index", "nlz", "laser"}
    assert all(v.dtype == np.float32 and len(v) == len(f.points) for v in f.features.values())
    order = _blocks(reference)
    polar = np.concatenate([reference[f"polar_{key}"] for *_, key in order])
    np.testing.assert_array_equal(f.features["intensity"], polar[:, 1])
    np.testing.assert_array_equal(f.features["elongation"], polar[:, 2])
    np.testing.assert_array_equal(f.features["nlz"], np.concatenate([reference[f"nlz_{key}"] for *_, key in order]))
    assert set(np.unique(f.features["nlz"]).tolist()) == {-1.0, 1.0}
    # range: the TOP points are motion-compensated, the others are range from the lidar origin
    cal = {c.name: c for c in read_proto(REFERENCE_RECORD).context.laser_calibrations}
    origin = np.asarray(cal[FRONT].extrinsic.transform).reshape(4, 4)[:3, 3]
    front = f.features["laser"] == FRONT
    np.testing.assert_allclose(np.linalg.norm(f.points[front] - origin, axis=1),
                               np.concatenate([reference["polar_2_1"][:, 0], reference["polar_2_2"][:, 0]]), atol=1e-4)


def test_segmentation_labels_match_the_official_ones(reference, reference_frame) -> None:
    f = reference_frame
    assert f.seg_labels is not None and f.seg_labels.dtype == np.uint8
    want = np.concatenate([
        reference[f"seg_{key}"] if f"seg_{key}" in reference else np.full(len(reference[f"points_{key}"]), 255)
        for *_, key in _blocks(reference)
    ])
    np.testing.assert_array_equal(f.seg_labels, want)
    top = f.features["laser"] == TOP
    assert np.all(f.seg_labels[~top] == 255) and np.all(f.seg_labels[top] < 255)


def test_frame_identity_and_pose(reference_proto, reference_frame) -> None:
    f, p = reference_frame, reference_proto
    assert f.scene == p.context.name
    assert f.timestamp_us == p.timestamp_micros
    assert f.frame_id == f"{p.context.name}/{p.timestamp_micros}"
    assert f.pose.dtype == np.float64
    np.testing.assert_array_equal(f.pose, np.asarray(p.pose.transform).reshape(4, 4))


# --------------------------------------------------------------------------- segments, refs, labels


def test_segment_files_and_refs(synthetic: Path) -> None:
    files = segment_files(synthetic, "training")
    assert files == segment_files(synthetic, "train") == sorted((synthetic / "training").glob("segment-*.tfrecord"))
    assert len(files) == 1
    assert frame_refs(files) == [(str(files[0]), 0), (str(files[0]), 1)]
    with pytest.raises(FileNotFoundError, match=re.escape(str(synthetic / "validation"))):
        segment_files(synthetic, "val")
    with pytest.raises(FileNotFoundError, match=re.escape(str(synthetic / "testing"))):
        segment_files(synthetic, "testing")
    with pytest.raises(ValueError, match="unknown Waymo split"):
        segment_files(synthetic, "trainval")


def test_labels_and_boxes_follow_the_protos(synthetic: Path) -> None:
    (path,) = segment_files(synthetic, "training")
    for index in (0, 1):
        proto = read_proto(path, index)
        f = read_frame(path, index)
        f.validate("test")
        labels = proto.laser_labels
        assert len(labels) > 0 and len(f.boxes) == len(labels)
        assert f.boxes.dtype == np.float32 and f.boxes.shape == (len(labels), 7)
        want = np.array([[b.box.center_x, b.box.center_y, b.box.center_z, b.box.length, b.box.width,
                          b.box.height, b.box.heading] for b in labels], dtype=np.float32)
        np.testing.assert_array_equal(f.boxes, want)
        assert f.box_names.tolist() == [label_pb2.Label.Type.Name(b.type) for b in labels]
        assert set(f.box_names.tolist()) <= {"TYPE_VEHICLE", "TYPE_PEDESTRIAN", "TYPE_SIGN", "TYPE_CYCLIST"}
        np.testing.assert_array_equal(
            f.box_velocity, np.array([[b.metadata.speed_x, b.metadata.speed_y] for b in labels], np.float32))
        assert f.box_num_points.dtype == np.int32
        assert f.box_num_points.tolist() == [b.num_lidar_points_in_box for b in labels]
        assert f.box_ids.tolist() == [b.id for b in labels]
        assert f.box_difficulty.dtype == np.int8
        assert f.box_difficulty.tolist() == [b.detection_difficulty_level for b in labels]
        assert f.frame_id == f"{proto.context.name}/{proto.timestamp_micros}"
        # points: per (laser, return) blocks in name order, with that return's features
        start = 0
        for laser in (1, 2, 3, 4, 5):
            for r in (0, 1):
                image = decode_range_image(proto, laser, r)
                mask = image[..., 0] > 0
                n = int(mask.sum())
                block = slice(start, start + n)
                assert np.all(f.features["laser"][block] == laser)
                assert np.all(f.features["return_index"][block] == r)
                np.testing.assert_array_equal(f.features["intensity"][block], image[..., 1][mask])
                np.testing.assert_array_equal(f.features["elongation"][block], image[..., 2][mask])
                np.testing.assert_array_equal(f.features["nlz"][block], image[..., 3][mask])
                seg = decode_segmentation(proto, laser, r)
                if index == 0 and laser == TOP:
                    np.testing.assert_array_equal(f.seg_labels[block], seg[..., 1][mask])
                elif index == 0:
                    assert seg is None and np.all(f.seg_labels[block] == 255)
                start += n
        assert start == len(f.points)
        if index == 1:  # segmentation labels on every 5th frame only
            assert f.seg_labels is None


def test_box_velocity_is_nan_without_metadata(tmp_path: Path, reference_proto) -> None:
    frame = dataset_pb2.Frame()
    frame.CopyFrom(reference_proto)
    label = frame.laser_labels.add()
    label.box.center_x, label.box.length, label.box.width, label.box.height = 5.0, 4.0, 2.0, 1.5
    label.type = label_pb2.Label.TYPE_SIGN
    label.id = "no-metadata"
    f = read_frame(_write_frame(tmp_path / "segment-x.tfrecord", frame), 0)
    assert f.box_ids[-1] == "no-metadata" and f.box_names[-1] == "TYPE_SIGN"
    assert np.isnan(f.box_velocity[-1]).all() and f.box_difficulty[-1] == 0


# --------------------------------------------------------------------------- errors


def test_record_offsets_and_read_record(tmp_path: Path) -> None:
    path = tmp_path / "a.tfrecord"
    records = [b"", b"abc", bytes(range(256)) * 10]
    write_records(path, records)
    offsets = record_offsets(path)
    assert [length for _, length in offsets] == [len(r) for r in records]
    assert [read_record(path, off) for off, _ in offsets] == records == list(iter_records(path))


@pytest.mark.parametrize("cut", [5, 14, 200])
def test_truncated_segment_names_the_file(tmp_path: Path, cut: int) -> None:
    raw = REFERENCE_RECORD.read_bytes()
    path = tmp_path / "segment-truncated.tfrecord"
    path.write_bytes(raw + raw[:cut])  # record 1 cut short (header, CRC or data)
    with pytest.raises(TFRecordError, match=re.escape(f"{path}: record 1")):
        frame_refs([path])
    path.write_bytes(raw[:-cut])  # the only record cut short
    with pytest.raises(TFRecordError, match=re.escape(f"{path}: record 0")):
        frame_refs([path])
    with pytest.raises(TFRecordError, match=re.escape(f"{path}: record 0")):
        read_frame(path, 0)


def test_flipped_byte_names_the_file(tmp_path: Path) -> None:
    raw = bytearray(REFERENCE_RECORD.read_bytes())
    path = tmp_path / "segment-flipped.tfrecord"
    data = raw.copy()
    data[len(raw) // 2] ^= 0x10  # inside the record's data
    path.write_bytes(bytes(data))
    assert frame_refs([path]) == [(str(path), 0)]  # framing intact; the data CRC is checked on reading
    with pytest.raises(TFRecordError, match=re.escape(f"{path}: record 0") + ".*data CRC mismatch"):
        read_frame(path, 0)
    header = raw.copy()
    header[3] ^= 0x01  # the length
    path2 = tmp_path / "segment-flipped-header.tfrecord"
    path2.write_bytes(bytes(header))
    with pytest.raises(TFRecordError, match=re.escape(f"{path2}: record 0") + ".*length CRC mismatch"):
        frame_refs([path2])


def test_missing_record_and_non_frame_record(tmp_path: Path) -> None:
    with pytest.raises(IndexError, match=re.escape(f"{REFERENCE_RECORD}: record 3")):
        read_frame(REFERENCE_RECORD, 3)
    path = tmp_path / "segment-garbage.tfrecord"
    write_records(path, [b"\xff\xff\xff\xff"])
    with pytest.raises(ValueError, match=re.escape(f"{path}: record 0: not a Waymo Frame")):
        read_frame(path, 0)


def test_nonfinite_points_are_dropped_and_counted(tmp_path: Path, reference, reference_proto) -> None:
    frame = dataset_pb2.Frame()
    frame.CopyFrom(reference_proto)
    top = next(laser for laser in frame.lasers if laser.name == TOP)
    pose = decode_matrix_float(top.ri_return1.range_image_pose_compressed).copy()
    pose[:2, :, 0] = np.nan  # TOP rows 0..1: NaN roll -> NaN points, both returns
    top.ri_return1.range_image_pose_compressed = encode_matrix_float(pose, 1)
    cal = next(c for c in frame.context.laser_calibrations if c.name == FRONT)
    cal.extrinsic.transform[3] = float("inf")  # every FRONT point
    path = _write_frame(tmp_path / "segment-nan.tfrecord", frame)

    f = read_frame(path, 0)
    f.validate("test")
    n_rows = [int((decode_range_image(frame, TOP, r)[:2, :, 0] > 0).sum()) for r in (0, 1)]
    n_front = len(reference["points_2_1"]) + len(reference["points_2_2"])
    assert min(n_rows) > 0 and n_front > 0
    assert f.extra["dropped_nonfinite"] == sum(n_rows) + n_front
    assert np.isfinite(f.points).all()
    total = sum(len(reference[f"points_{key}"]) for *_, key in _blocks(reference))
    assert len(f.points) == total - f.extra["dropped_nonfinite"]
    assert len(f.seg_labels) == len(f.points)
    assert not np.any(f.features["laser"] == FRONT)
    # the remaining TOP first-return points are the official ones of rows 2..15
    top1 = (f.features["laser"] == TOP) & (f.features["return_index"] == 0)
    np.testing.assert_allclose(f.points[top1], reference["points_1_1"][n_rows[0]:], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(f.features["intensity"][top1], reference["polar_1_1"][n_rows[0]:, 1])


def test_frame_without_points_names_the_file(tmp_path: Path, reference_proto) -> None:
    frame = dataset_pb2.Frame()
    frame.CopyFrom(reference_proto)
    for laser in frame.lasers:
        for ri in (laser.ri_return1, laser.ri_return2):
            image = decode_matrix_float(ri.range_image_compressed).copy()
            image[..., 0] = -1.0
            ri.range_image_compressed = encode_matrix_float(image, 1)
    path = _write_frame(tmp_path / "segment-empty.tfrecord", frame)
    with pytest.raises(EmptyFrameError, match=re.escape(f"{path}: record 0 (frame ")) as info:
        read_frame(path, 0)
    assert "no LiDAR returns in this frame: a stripped or camera-only file?" in str(info.value)
    assert "10 range images, no return in any" in str(info.value)
