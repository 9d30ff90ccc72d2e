"""The Waymo format layer without TensorFlow: TFRecord framing, matrix codecs, range-image
geometry, and the synthetic frame writer read back through protobuf."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pytest
from waymo_open_dataset import dataset_pb2, label_pb2
from waymo_segmentation import decode_segmentation

from gpicture.data.waymo import matrix_codec as mc
from gpicture.data.waymo import range_image as ri
from gpicture.data.waymo.frame import (
    decode_laser_points,
    decode_pixel_pose,
    decode_range_image,
    laser_calibration,
)
from gpicture.data.waymo.tfrecord import (
    TFRecordError,
    iter_records,
    masked_crc32c,
    write_records,
)
from gpicture.synth.records import ObjectStates, WaymoFrame, WaymoLaser, WaymoReturn
from gpicture.synth.waymo_writer import frame_to_proto, label_id, write_segment

TOP = dataset_pb2.LaserName.TOP
SIDE_LEFT = dataset_pb2.LaserName.SIDE_LEFT


# --------------------------------------------------------------------------- TFRecord


def test_masked_crc_matches_the_spec() -> None:
    # CRC-32C check value of "123456789" is 0xE3069283; of b"" is 0.
    crc = 0xE3069283
    expected = ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
    assert masked_crc32c(b"123456789") == expected
    assert masked_crc32c(b"") == 0xA282EAD8


def test_tfrecord_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    records = [b"", b"hello", rng.bytes(100_000), bytes(range(256))]
    path = tmp_path / "a.tfrecord"
    write_records(path, iter(records))
    assert list(iter_records(path)) == records
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tfrecord"]  # no temporary left
    # layout: uint64 length, masked crc of it, data, masked crc of data
    raw = path.read_bytes()
    assert raw[:8] == (0).to_bytes(8, "little")
    assert int.from_bytes(raw[8:12], "little") == masked_crc32c(raw[:8])
    assert len(raw) == sum(16 + len(r) for r in records)


def test_tfrecord_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "a.tfrecord"
    write_records(path, [b"old"])

    def broken():
        yield b"new"
        raise RuntimeError("simulator died")

    with pytest.raises(RuntimeError):
        write_records(path, broken())
    assert list(iter_records(path)) == [b"old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tfrecord"]


def _two_records(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "seg.tfrecord"
    write_records(path, [b"first record", b"second record"])
    return path, path.read_bytes()


def test_tfrecord_data_corruption_names_file_record_and_offset(tmp_path: Path) -> None:
    path, raw = _two_records(tmp_path)
    second = 16 + len(b"first record")
    bad = bytearray(raw)
    bad[second + 12 + 3] ^= 0x01  # a byte of the second record's data
    path.write_bytes(bytes(bad))
    with pytest.raises(TFRecordError) as e:
        list(iter_records(path))
    assert str(path) in str(e.value) and "record 1" in str(e.value) and f"byte {second}" in str(e.value)
    assert "data CRC" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_tfrecord_length_corruption(tmp_path: Path) -> None:
    path, raw = _two_records(tmp_path)
    bad = bytearray(raw)
    bad[0] ^= 0x40
    path.write_bytes(bytes(bad))
    with pytest.raises(TFRecordError, match="record 0 at byte 0: length CRC"):
        list(iter_records(path))


@pytest.mark.parametrize("cut", [1, 4, 10])
def test_tfrecord_truncated(tmp_path: Path, cut: int) -> None:
    path, raw = _two_records(tmp_path)
    path.write_bytes(raw[:-cut])
    it = iter_records(path)
    assert next(it) == b"first record"
    with pytest.raises(TFRecordError, match="record 1 .*truncated") as e:
        next(it)
    assert str(path) in str(e.value)
    path.write_bytes(raw[: 16 + len(b"first record") + 5])  # mid header
    with pytest.raises(TFRecordError, match="truncated header"):
        list(iter_records(path))


# --------------------------------------------------------------------------- matrix codecs


def _pb_float(a: np.ndarray) -> dataset_pb2.MatrixFloat:
    m = dataset_pb2.MatrixFloat()
    m.data.extend(a.ravel().tolist())
    m.shape.dims.extend(a.shape)
    return m


def _pb_int32(a: np.ndarray) -> dataset_pb2.MatrixInt32:
    m = dataset_pb2.MatrixInt32()
    m.data.extend(a.ravel().tolist())
    m.shape.dims.extend(a.shape)
    return m


@pytest.mark.parametrize("shape", [(3, 5, 4), (1,), (0, 4), (64, 200, 6)])
def test_matrix_float_matches_protobuf(shape: tuple[int, ...]) -> None:
    a = np.random.default_rng(1).normal(scale=50, size=shape).astype(np.float32)
    reference = _pb_float(a).SerializeToString()
    for level in (1, 6):
        encoded = mc.encode_matrix_float(a, level)
        assert zlib.decompress(encoded) == reference
        parsed = dataset_pb2.MatrixFloat.FromString(zlib.decompress(encoded))
        assert list(parsed.shape.dims) == list(shape)
        np.testing.assert_array_equal(np.asarray(parsed.data, np.float32).reshape(shape), a)
    decoded = mc.decode_matrix_float(zlib.compress(reference))
    assert decoded.dtype == np.float32 and decoded.shape == shape
    np.testing.assert_array_equal(decoded, a)
    decoded.flat[:1] = 0  # writable


@pytest.mark.parametrize("shape", [(4, 7, 2), (3, 5, 6), (0, 2)])
def test_matrix_int32_matches_protobuf(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(2)
    a = rng.integers(-(2**31), 2**31, size=shape, dtype=np.int64).astype(np.int32)
    special = np.array([0, 1, 127, 128, 16383, 16384, -1, -128, 2**31 - 1, -(2**31)], np.int32)
    a.flat[: min(a.size, special.size)] = special[: a.size]
    reference = _pb_int32(a).SerializeToString()
    assert zlib.decompress(mc.encode_matrix_int32(a)) == reference
    decoded = mc.decode_matrix_int32(zlib.compress(reference))
    assert decoded.dtype == np.int32 and decoded.shape == shape
    np.testing.assert_array_equal(decoded, a)
    small = rng.integers(0, 23, size=(5, 9, 2)).astype(np.int32)  # the all-one-byte fast path
    assert zlib.decompress(mc.encode_matrix_int32(small)) == _pb_int32(small).SerializeToString()
    np.testing.assert_array_equal(mc.decode_matrix_int32(mc.encode_matrix_int32(small)), small)
    zeros = mc.encode_zeros_int32((3, 4, 6), 6)
    np.testing.assert_array_equal(mc.decode_matrix_int32(zeros), np.zeros((3, 4, 6), np.int32))


def test_matrix_decoders_accept_any_valid_layout() -> None:
    """Fields out of order, data split over several packed chunks, unpacked elements."""
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 7.5
    shape_only = dataset_pb2.MatrixFloat()
    shape_only.shape.dims.extend(a.shape)
    first, second = _pb_float(a[:1]), _pb_float(a[1:])
    first.ClearField("shape")
    second.ClearField("shape")
    payload = shape_only.SerializeToString() + first.SerializeToString() + second.SerializeToString()
    np.testing.assert_array_equal(mc.decode_matrix_float(zlib.compress(payload)), a)
    unpacked = b"".join(b"\x0d" + np.float32(v).tobytes() for v in a.ravel()) + shape_only.SerializeToString()
    np.testing.assert_array_equal(mc.decode_matrix_float(zlib.compress(unpacked)), a)

    b = (np.arange(12, dtype=np.int32) * 300 - 1000).reshape(3, 4)
    unpacked = b"".join(b"\x08" + mc._varint(int(v)) for v in b.ravel()) + _shape_bytes(b.shape)
    np.testing.assert_array_equal(mc.decode_matrix_int32(zlib.compress(unpacked)), b)
    reordered = _shape_bytes(b.shape) + mc.matrix_int32_bytes(b.ravel())[: -len(_shape_bytes((12,)))]
    np.testing.assert_array_equal(mc.decode_matrix_int32(zlib.compress(reordered)), b)


def _shape_bytes(shape: tuple[int, ...]) -> bytes:
    m = dataset_pb2.MatrixInt32()
    m.shape.dims.extend(shape)
    return m.SerializeToString()


# --------------------------------------------------------------------------- geometry


def test_inclinations_and_azimuths_conventions() -> None:
    beams = np.radians([-20.0, -10.0, -3.0, 1.0])
    np.testing.assert_allclose(ri.inclinations(beams, 4), beams[::-1])
    c = dataset_pb2.LaserCalibration(beam_inclination_min=-0.4, beam_inclination_max=0.2)
    np.testing.assert_allclose(ri.inclinations(c, 3), [0.1, -0.1, -0.3])
    c.beam_inclinations.extend(beams.tolist())
    np.testing.assert_allclose(ri.inclinations(c, 4), beams[::-1])
    with pytest.raises(ValueError):
        ri.inclinations(c, 5)
    yaw = 0.3
    e = np.eye(4)
    e[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    az = ri.azimuths(4, e)
    np.testing.assert_allclose(az + yaw, [0.75 * math.pi, 0.25 * math.pi, -0.25 * math.pi, -0.75 * math.pi])


def test_pose_matrices_compose_yaw_pitch_roll() -> None:
    roll, pitch, yaw = 0.1, -0.2, 2.5
    rx = np.array([[1, 0, 0], [0, math.cos(roll), -math.sin(roll)], [0, math.sin(roll), math.cos(roll)]])
    ry = np.array([[math.cos(pitch), 0, math.sin(pitch)], [0, 1, 0], [-math.sin(pitch), 0, math.cos(pitch)]])
    rz = np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]])
    m = ri.pose_matrices(np.array([[roll, pitch, yaw, 1.0, 2.0, 3.0]]))
    assert m.shape == (1, 4, 4)
    np.testing.assert_allclose(m[0, :3, :3], rz @ ry @ rx, atol=1e-12)
    np.testing.assert_allclose(m[0, :, 3], [1, 2, 3, 1])


# --------------------------------------------------------------------------- frames


def _rot(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Rz(yaw) Ry(pitch) Rx(roll), built from elementary rotations."""
    cr, sr, cp, sp, cy, sy = (math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch),
                              math.cos(yaw), math.sin(yaw))
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _pose(roll: float, pitch: float, yaw: float, t: tuple[float, float, float]) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = _rot(roll, pitch, yaw)
    m[:3, 3] = t
    return m


def _expected_points(
    image: np.ndarray,
    extrinsic: np.ndarray,
    beam_ascending: np.ndarray,
    pixel_pose: np.ndarray | None,
    world_from_vehicle: np.ndarray,
) -> np.ndarray:
    """Per-pixel trigonometry: the vehicle-frame point of every pixel with range > 0, row-major."""
    height, width = image.shape[:2]
    mount_yaw = math.atan2(extrinsic[1, 0], extrinsic[0, 0])
    out = []
    for i in range(height):
        inc = float(beam_ascending[height - 1 - i])  # row 0 = highest beam
        for c in range(width):
            r = float(image[i, c, 0])
            if r <= 0:
                continue
            vehicle_azimuth = (2.0 * (width - c - 0.5) / width - 1.0) * math.pi
            az = vehicle_azimuth - mount_yaw
            s = np.array([r * math.cos(inc) * math.cos(az), r * math.cos(inc) * math.sin(az), r * math.sin(inc)])
            v = extrinsic[:3, :3] @ s + extrinsic[:3, 3]
            if pixel_pose is not None:
                roll, pitch, yaw, x, y, z = (float(q) for q in pixel_pose[i, c])
                w = _rot(roll, pitch, yaw) @ v + np.array([x, y, z])
                v = world_from_vehicle[:3, :3].T @ (w - world_from_vehicle[:3, 3])
            out.append(v)
    return np.array(out, dtype=np.float32).reshape(-1, 3)


def _range_image(rng: np.random.Generator, height: int, width: int, lo: float, hi: float, hit: float) -> np.ndarray:
    image = np.zeros((height, width, 4), np.float32)
    image[..., 0] = np.where(rng.random((height, width)) < hit, rng.uniform(lo, hi, (height, width)), -1.0)
    image[..., 1] = rng.uniform(0, 1, (height, width))
    image[..., 2] = rng.uniform(0, 0.5, (height, width))
    image[..., 3] = -1.0
    image[image[..., 0] <= 0, 1:3] = 0
    return image


@pytest.fixture(scope="module")
def frame() -> WaymoFrame:
    rng = np.random.default_rng(7)
    world_from_vehicle = _pose(0.0, 0.0, 0.7, (120.0, -45.0, 2.5))

    # TOP: 8 x 64, non-uniform beams, slightly yawed and tilted mount, pixel pose varying by column
    h, w = 8, 64
    beams = np.radians([-17.6, -11.9, -8.3, -5.1, -3.0, -1.4, 0.3, 2.4])
    top_extrinsic = _pose(0.004, -0.01, 0.02, (1.43, 0.0, 2.18))
    k = np.arange(w, dtype=np.float64) - w / 2
    pixel_pose = np.zeros((h, w, 6), np.float32)
    pixel_pose[..., 0] = 0.002 * np.sin(k / 7)
    pixel_pose[..., 1] = -0.003 * np.cos(k / 5)
    pixel_pose[..., 2] = 0.7 + 0.0015 * k
    pixel_pose[..., 3] = 120.0 + 0.02 * k * math.cos(0.7)
    pixel_pose[..., 4] = -45.0 + 0.02 * k * math.sin(0.7)
    pixel_pose[..., 5] = 2.5 + 0.001 * k
    top_returns = []
    for hit, lo, hi in ((0.8, 2.0, 75.0), (0.25, 5.0, 75.0)):
        image = _range_image(rng, h, w, lo, hi, hit)
        seg = np.stack([rng.integers(0, 5000, (h, w)), rng.integers(0, 23, (h, w))], -1).astype(np.int32)
        top_returns.append(WaymoReturn(range_image=image, segmentation=seg))
    top = WaymoLaser(
        name=TOP, vehicle_from_sensor=top_extrinsic, beam_inclinations=beams,
        inclination_min=float(beams[0]), inclination_max=float(beams[-1]),
        returns=(top_returns[0], top_returns[1]), pixel_pose=pixel_pose,
        points=tuple(  # type: ignore[arg-type]
            _expected_points(r.range_image, top_extrinsic, beams, pixel_pose, world_from_vehicle)
            for r in top_returns
        ),
    )

    # SIDE_LEFT: 4 x 32, uniform beams, mounted looking left
    h, w = 4, 32
    lo_inc, hi_inc = -1.5, 0.5
    uniform = lo_inc + (np.arange(h) + 0.5) / h * (hi_inc - lo_inc)
    side_extrinsic = _pose(0.0, 0.0, math.pi / 2, (3.0, 1.0, 1.0))
    side_returns = [WaymoReturn(range_image=_range_image(rng, h, w, 0.3, 20.0, hit), segmentation=None)
                    for hit in (0.7, 0.3)]
    side = WaymoLaser(
        name=SIDE_LEFT, vehicle_from_sensor=side_extrinsic, beam_inclinations=None,
        inclination_min=lo_inc, inclination_max=hi_inc,
        returns=(side_returns[0], side_returns[1]), pixel_pose=None,
        points=tuple(  # type: ignore[arg-type]
            _expected_points(r.range_image, side_extrinsic, uniform, None, world_from_vehicle)
            for r in side_returns
        ),
    )

    # objects: a car and a pedestrian near the ego car, and an unlabelled one
    vehicle_centers = np.array([[10.0, 2.0, 0.9], [-4.0, -6.0, 0.85], [30.0, 0.0, 0.5]])
    centers = vehicle_centers @ world_from_vehicle[:3, :3].T + world_from_vehicle[:3, 3]
    objects = ObjectStates(
        instance_id=np.array([3, 17, 40], np.int64),
        class_name=np.array(["car", "pedestrian", "barrier"]),
        center=centers,
        size=np.array([[4.5, 1.9, 1.6], [0.7, 0.6, 1.75], [2.0, 0.3, 1.0]]),
        yaw=np.array([0.7 + 0.3, 0.7 - 2.0, 0.7]),
        velocity=np.array([[5.0 * math.cos(1.0), 5.0 * math.sin(1.0), 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]),
        attribute=np.array(["vehicle.moving", "pedestrian.moving", ""]),
        num_points=np.array([120, 9, 30], np.int64),
        visibility=np.array([4, 3, 4], np.int64),
    )
    return WaymoFrame(
        context_name="1234567890_abc_000_000", timestamp_us=1_550_000_000_123_456,
        world_from_vehicle=world_from_vehicle, lasers=[top, side], objects=objects,
        waymo_type=np.array([1, 2, 0]), difficulty=np.array([1, 2, 1]), has_segmentation=True,
    )


@pytest.fixture(scope="module")
def parsed(frame: WaymoFrame, tmp_path_factory: pytest.TempPathFactory) -> dataset_pb2.Frame:
    path = tmp_path_factory.mktemp("waymo") / f"segment-{frame.context_name}_with_camera_labels.tfrecord"
    write_segment([frame, frame], path)
    records = list(iter_records(path))
    assert len(records) == 2 and records[0] == records[1]
    return dataset_pb2.Frame.FromString(records[0])


def test_expected_points_are_plausible(frame: WaymoFrame) -> None:
    """Guard the test's own trigonometry: ranges are preserved from the sensor origin."""
    side = frame.lasers[1]
    image = side.returns[0].range_image
    ranges = image[..., 0][image[..., 0] > 0]
    np.testing.assert_allclose(np.linalg.norm(side.points[0] - side.vehicle_from_sensor[:3, 3], axis=1),
                               ranges, rtol=1e-5)
    # mounted looking left: sensor azimuth 0 (its boresight) is vehicle azimuth pi/2, column 7.5 of 32
    vehicle_azimuth = ri.azimuths(32, side.vehicle_from_sensor) + math.pi / 2
    np.testing.assert_allclose(vehicle_azimuth[[7, 8]], [math.pi / 2 + math.pi / 32, math.pi / 2 - math.pi / 32])


@pytest.mark.parametrize("laser_index", [0, 1])
@pytest.mark.parametrize("return_index", [0, 1])
def test_written_frame_decodes_to_the_expected_points(
    frame: WaymoFrame, parsed: dataset_pb2.Frame, laser_index: int, return_index: int
) -> None:
    laser = frame.lasers[laser_index]
    points = decode_laser_points(parsed, laser.name, return_index)
    expected = laser.points[return_index]
    assert points.dtype == np.float32 and points.shape == expected.shape and len(expected) > 0
    np.testing.assert_allclose(points, expected, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(decode_range_image(parsed, laser.name, return_index),
                                  laser.returns[return_index].range_image)


def test_written_frame_content(frame: WaymoFrame, parsed: dataset_pb2.Frame) -> None:
    assert parsed.context.name == frame.context_name
    assert parsed.timestamp_micros == frame.timestamp_us
    np.testing.assert_allclose(np.reshape(parsed.pose.transform, (4, 4)), frame.world_from_vehicle)
    assert len(parsed.no_label_zones) == 0 and len(parsed.images) == 0
    stats = parsed.context.stats
    assert (stats.time_of_day, stats.location, stats.weather) == ("Day", "location_sf", "sunny")
    assert {(c.type, c.count) for c in stats.laser_object_counts} == {(1, 1), (2, 1)}

    top, side = frame.lasers
    c_top, c_side = laser_calibration(parsed, TOP), laser_calibration(parsed, SIDE_LEFT)
    np.testing.assert_allclose(list(c_top.beam_inclinations), top.beam_inclinations)
    assert len(c_side.beam_inclinations) == 0
    assert (c_side.beam_inclination_min, c_side.beam_inclination_max) == (-1.5, 0.5)
    np.testing.assert_allclose(np.reshape(c_side.extrinsic.transform, (4, 4)), side.vehicle_from_sensor)

    np.testing.assert_array_equal(decode_pixel_pose(parsed, TOP), top.pixel_pose)
    assert decode_pixel_pose(parsed, SIDE_LEFT) is None
    for k in (0, 1):
        np.testing.assert_array_equal(decode_segmentation(parsed, TOP, k), top.returns[k].segmentation)
        assert decode_segmentation(parsed, SIDE_LEFT, k) is None
    for laser in parsed.lasers:
        h, w = (8, 64) if laser.name == TOP else (4, 32)
        for r in (laser.ri_return1, laser.ri_return2):
            np.testing.assert_array_equal(mc.decode_matrix_int32(r.camera_projection_compressed),
                                          np.zeros((h, w, 6), np.int32))
        assert not laser.ri_return2.range_image_pose_compressed


def test_laser_labels_in_the_vehicle_frame(parsed: dataset_pb2.Frame) -> None:
    labels = {label.id: label for label in parsed.laser_labels}
    assert len(labels) == 2  # the waymo_type 0 object is not labelled
    car, ped = labels[label_id(3)], labels[label_id(17)]
    assert car.type == label_pb2.Label.TYPE_VEHICLE and ped.type == label_pb2.Label.TYPE_PEDESTRIAN
    assert len(car.id) == 22 and label_id(3) == label_id(3) != label_id(17)
    np.testing.assert_allclose([car.box.center_x, car.box.center_y, car.box.center_z], [10.0, 2.0, 0.9], atol=1e-9)
    np.testing.assert_allclose([ped.box.center_x, ped.box.center_y, ped.box.center_z], [-4.0, -6.0, 0.85], atol=1e-9)
    assert (car.box.length, car.box.width, car.box.height) == (4.5, 1.9, 1.6)
    assert car.box.heading == pytest.approx(0.3) and ped.box.heading == pytest.approx(-2.0)
    # car drives at 5 m/s along world yaw 1.0 = vehicle heading 0.3
    assert (car.metadata.speed_x, car.metadata.speed_y) == pytest.approx((5 * math.cos(0.3), 5 * math.sin(0.3)))
    assert (ped.metadata.speed_x, ped.metadata.speed_y) == pytest.approx((math.sin(0.7), math.cos(0.7)))
    assert car.metadata.HasField("accel_x") and car.metadata.accel_x == 0.0
    assert (car.num_lidar_points_in_box, car.num_top_lidar_points_in_box) == (120, 120)
    assert car.detection_difficulty_level == car.tracking_difficulty_level == label_pb2.Label.LEVEL_1
    assert ped.detection_difficulty_level == ped.tracking_difficulty_level == label_pb2.Label.LEVEL_2


def test_top_needs_pixel_poses(frame: WaymoFrame) -> None:
    import dataclasses

    top = dataclasses.replace(frame.lasers[0], pixel_pose=None)
    with pytest.raises(ValueError, match="pixel poses"):
        frame_to_proto(dataclasses.replace(frame, lasers=[top]))
