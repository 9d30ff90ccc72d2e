"""Waymo range images in numpy: the official geometry conventions and the field codecs.

Geometry (``waymo_open_dataset/utils/range_image_utils.py`` and ``frame_utils.py``):

* Row 0 of a range image is the highest beam. ``LaserCalibration.beam_inclinations``
  are stored ascending (lowest beam first), so row ``i`` uses
  ``beam_inclinations[H - 1 - i]``; without them, the beams are uniform between
  ``beam_inclination_min`` and ``beam_inclination_max`` (pixel centres), again reversed.
* Column ``c`` of a width-``W`` image has the sensor-frame azimuth
  ``((W - c - 0.5) / W * 2 - 1) * pi - atan2(R[1, 0], R[0, 0])``, ``R`` the rotation of
  the extrinsic ``vehicle_from_sensor``: the columns sweep the *vehicle-frame*
  azimuth from +pi (column 0) down to -pi, whatever the lidar's mounting yaw.
* A pixel ``(range, azimuth, inclination)`` is the sensor-frame point
  ``range * (cos(inc) cos(az), cos(inc) sin(az), sin(inc))``, taken into the vehicle
  frame by the extrinsic. With a pixel pose (TOP only: the ``world_from_vehicle``
  pose at the instant the pixel was fired, as roll, pitch, yaw, x, y, z), the point is
  taken into the world by the pixel pose and back into the vehicle frame of the frame
  pose (``Frame.pose``), which undoes the rolling shutter.

Codecs: a ``*_compressed`` field is the zlib stream of a serialized
``dataset_pb2.MatrixFloat`` / ``MatrixInt32`` (field 1: packed data, field 2:
``MatrixShape`` with repeated ``dims``). The serialization is done here directly with
numpy (byte-identical to protobuf's own) because pushing millions of values through the
protobuf runtime is slow.

Units: metres and radians throughout; poses are 4x4 ``a_from_b`` matrices.
"""

from __future__ import annotations

import functools
import zlib
from typing import Any

import numpy as np

from waymo_open_dataset import dataset_pb2

DEFAULT_ZLIB_LEVEL = 6


# --------------------------------------------------------------------------- geometry


def uniform_inclinations(inclination_min: float, inclination_max: float, height: int) -> np.ndarray:
    """Uniform beam inclinations (rad), ascending as stored (``compute_inclination``).

    Returns ``(H,)`` float64 ``min + (arange(H) + 0.5) / H * (max - min)``: beam 0 is
    the lowest. Reverse it for row order.
    """
    diff = float(inclination_max) - float(inclination_min)
    return (np.arange(height, dtype=np.float64) + 0.5) / float(height) * diff + float(inclination_min)


def inclinations(laser_calibration_or_values: Any, height: int) -> np.ndarray:
    """Per-row inclination (rad) of a range image of ``height`` rows; row 0 = highest beam.

    Args:
        laser_calibration_or_values: a ``dataset_pb2.LaserCalibration``, a
            ``gpicture.synth.records.WaymoLaser`` (``beam_inclinations`` or None,
            ``inclination_min``/``inclination_max``), or the ascending beam
            inclinations themselves (array-like of length ``height``).
        height: number of rows H.

    Returns:
        ``(H,)`` float64: the beam inclinations reversed when there are any, else the
        uniform ones of the calibration's min/max, reversed.
    """
    c = laser_calibration_or_values
    if hasattr(c, "beam_inclination_min"):  # dataset_pb2.LaserCalibration
        values, lo, hi = list(c.beam_inclinations), c.beam_inclination_min, c.beam_inclination_max
    elif hasattr(c, "inclination_min"):  # WaymoLaser
        values, lo, hi = c.beam_inclinations, c.inclination_min, c.inclination_max
    else:
        values, lo, hi = c, None, None
    values = np.asarray([] if values is None else values, dtype=np.float64).reshape(-1)
    if values.size:
        if values.size != height:
            raise ValueError(f"{values.size} beam inclinations for a range image of {height} rows")
        return values[::-1].copy()
    if lo is None:
        raise ValueError("no beam inclinations given")
    return uniform_inclinations(lo, hi, height)[::-1].copy()


def azimuths(width: int, vehicle_from_sensor: np.ndarray) -> np.ndarray:
    """Sensor-frame azimuth (rad) of each column of a range image of ``width`` columns.

    ``((arange(W, 0, -1) - 0.5) / W * 2 - 1) * pi - atan2(R[1, 0], R[0, 0])`` with ``R``
    the extrinsic's rotation (``compute_range_image_polar``). Returns ``(W,)`` float64.
    """
    e = np.asarray(vehicle_from_sensor, dtype=np.float64)
    az_correction = np.arctan2(e[1, 0], e[0, 0])
    ratios = (np.arange(width, 0, -1, dtype=np.float64) - 0.5) / float(width)
    return (ratios * 2.0 - 1.0) * np.pi - az_correction


def rotation_matrices(roll: np.ndarray, pitch: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """``Rz(yaw) @ Ry(pitch) @ Rx(roll)`` (``transform_utils.get_rotation_matrix``): ``(..., 3, 3)`` float64."""
    roll, pitch, yaw = (np.asarray(a, dtype=np.float64) for a in (roll, pitch, yaw))
    cr, sr = np.cos(roll), np.sin(roll)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(yaw), np.sin(yaw)
    r = np.empty(np.broadcast(roll, pitch, yaw).shape + (3, 3), dtype=np.float64)
    r[..., 0, 0] = cy * cp
    r[..., 0, 1] = cy * sp * sr - sy * cr
    r[..., 0, 2] = cy * sp * cr + sy * sr
    r[..., 1, 0] = sy * cp
    r[..., 1, 1] = sy * sp * sr + cy * cr
    r[..., 1, 2] = sy * sp * cr - cy * sr
    r[..., 2, 0] = -sp
    r[..., 2, 1] = cp * sr
    r[..., 2, 2] = cp * cr
    return r


def pose_matrices(pixel_pose: np.ndarray) -> np.ndarray:
    """4x4 ``world_from_vehicle`` matrices of pixel poses.

    Args:
        pixel_pose: ``(..., 6)`` roll, pitch, yaw (rad), x, y, z (m), e.g. ``(H, W, 6)``.

    Returns:
        ``(..., 4, 4)`` float64 with rotation ``Rz(yaw) Ry(pitch) Rx(roll)``.
    """
    p = np.asarray(pixel_pose, dtype=np.float64)
    out = np.zeros(p.shape[:-1] + (4, 4), dtype=np.float64)
    out[..., :3, :3] = rotation_matrices(p[..., 0], p[..., 1], p[..., 2])
    out[..., :3, 3] = p[..., 3:6]
    out[..., 3, 3] = 1.0
    return out


def range_image_to_points(
    range_image: np.ndarray,
    vehicle_from_sensor: np.ndarray,
    inclination: np.ndarray,
    pixel_pose: np.ndarray | None = None,
    world_from_vehicle: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Points of the valid pixels of a range image, as ``convert_range_image_to_point_cloud``.

    Args:
        range_image: ``(H, W)`` ranges (m) or ``(H, W, C)`` with the range in channel 0.
        vehicle_from_sensor: ``(4, 4)`` the lidar's extrinsic.
        inclination: ``(H,)`` per-row inclination (rad), row 0 = highest (``inclinations``).
        pixel_pose: optional ``(H, W, 6)`` per-pixel ``world_from_vehicle`` (roll, pitch,
            yaw, x, y, z); the official reader uses it for TOP only.
        world_from_vehicle: ``(4, 4)`` frame pose; required with ``pixel_pose``.

    Returns:
        ``points``: ``(N, 3)`` float32 vehicle frame (m) of the pixels with range > 0, in
        row-major pixel order; ``mask``: ``(H, W)`` bool, those pixels. Computed in float64.
    """
    ri = np.asarray(range_image)
    if ri.ndim == 3:
        ri = ri[..., 0]
    if ri.ndim != 2:
        raise ValueError(f"range image of shape {np.shape(range_image)}, expected (H, W) or (H, W, C)")
    height, width = ri.shape
    inclination = np.asarray(inclination, dtype=np.float64).reshape(-1)
    if inclination.shape != (height,):
        raise ValueError(f"{inclination.size} inclinations for {height} rows")
    extrinsic = np.asarray(vehicle_from_sensor, dtype=np.float64)

    mask = ri > 0
    rows, cols = np.nonzero(mask)
    rng = ri[rows, cols].astype(np.float64)
    az = azimuths(width, extrinsic)[cols]
    inc = inclination[rows]
    cos_inc = np.cos(inc)
    sensor = np.stack([np.cos(az) * cos_inc * rng, np.sin(az) * cos_inc * rng, np.sin(inc) * rng], axis=-1)
    points = sensor @ extrinsic[:3, :3].T + extrinsic[:3, 3]

    if pixel_pose is not None:
        if world_from_vehicle is None:
            raise ValueError("world_from_vehicle (the frame pose) must be given with pixel_pose")
        pp = np.asarray(pixel_pose, dtype=np.float64)
        if pp.shape != (height, width, 6):
            raise ValueError(f"pixel pose of shape {pp.shape}, expected {(height, width, 6)}")
        pp = pp[rows, cols]
        world = np.einsum("nij,nj->ni", rotation_matrices(pp[:, 0], pp[:, 1], pp[:, 2]), points) + pp[:, 3:6]
        vehicle_from_world = np.linalg.inv(np.asarray(world_from_vehicle, dtype=np.float64))
        points = world @ vehicle_from_world[:3, :3].T + vehicle_from_world[:3, 3]
    return points.astype(np.float32), mask


# --------------------------------------------------------------------------- wire format


def _varint(value: int) -> bytes:
    """Protobuf varint of a non-negative int (or a negative one as its 64-bit two's complement)."""
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode the varint at ``buf[pos:]``; returns (value, position after it)."""
    result = 0
    shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Irregular
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _encode_varints(values: np.ndarray) -> bytes:
    """Concatenated varints of int32 values (negative ones take 10 bytes, as protobuf's int32)."""
    v = np.asarray(values).astype(np.int64, copy=False).reshape(-1).view(np.uint64)
    if v.size == 0:
        return b""
    if int(v.max()) < 0x80:
        return v.astype(np.uint8).tobytes()
    n = np.ones(v.shape, dtype=np.int64)
    for k in range(1, 10):
        n += v >= np.uint64(1 << (7 * k))
    ends = np.cumsum(n)
    starts = ends - n
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    for k in range(10):
        sel = np.flatnonzero(n > k)
        if sel.size == 0:
            break
        byte = ((v[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        byte |= np.where(n[sel] > k + 1, 0x80, 0).astype(np.uint8)
        out[starts[sel] + k] = byte
    return out.tobytes()


def _decode_varints(buf: np.ndarray) -> np.ndarray:
    """int32 values of concatenated varints (``(M,)`` uint8 -> ``(N,)`` int32, low 32 bits as protobuf)."""
    b = np.asarray(buf, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0, dtype=np.int32)
    terminal = b < 0x80
    if terminal.all():
        return b.astype(np.int32)
    if not terminal[-1]:
        raise _Irregular
    ends = np.flatnonzero(terminal)
    starts = np.concatenate([[0], ends[:-1] + 1])
    group = np.concatenate([[0], np.cumsum(terminal)[:-1]])
    position = np.arange(b.size) - starts[group]
    if position.max() > 9:
        raise _Irregular
    parts = (b & 0x7F).astype(np.uint64) << (position.astype(np.uint64) * np.uint64(7))
    return np.add.reduceat(parts, starts).view(np.int64).astype(np.int32)


class _Irregular(Exception):
    """The fast parser met a layout it does not handle; protobuf's parser takes over."""


def _skip(buf: bytes, pos: int, wire_type: int) -> int:
    if wire_type == 0:
        return _read_varint(buf, pos)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == 2:
        length, pos = _read_varint(buf, pos)
        return pos + length
    if wire_type == 5:
        return pos + 4
    raise _Irregular


def _parse_matrix(payload: bytes) -> tuple[list[tuple[int, int]], list[int], bool]:
    """Locate the packed data chunks and the dims of a serialized Matrix{Float,Int32}.

    Returns ``(chunks as (start, end) byte ranges, dims, has_shape)``; raises
    ``_Irregular`` for anything but the packed layout protobuf writes.
    """
    chunks: list[tuple[int, int]] = []
    dims: list[int] = []
    has_shape = False
    pos, end = 0, len(payload)
    while pos < end:
        tag, pos = _read_varint(payload, pos)
        field, wire_type = tag >> 3, tag & 7
        if field == 1 and wire_type == 2:
            length, pos = _read_varint(payload, pos)
            chunks.append((pos, pos + length))
            pos += length
        elif field == 2 and wire_type == 2:
            length, pos = _read_varint(payload, pos)
            shape_end = pos + length
            if shape_end > end:
                raise _Irregular
            has_shape = True
            while pos < shape_end:
                tag, pos = _read_varint(payload, pos)
                if tag == 0x08:  # dims, unpacked (proto2 default)
                    d, pos = _read_varint(payload, pos)
                    dims.append(d)
                elif tag == 0x0A:  # dims, packed
                    length, pos = _read_varint(payload, pos)
                    sub = payload[pos : pos + length]
                    q = 0
                    while q < len(sub):
                        d, q = _read_varint(sub, q)
                        dims.append(d)
                    pos += length
                else:
                    pos = _skip(payload, pos, tag & 7)
            if pos != shape_end:
                raise _Irregular
        elif field == 1:
            raise _Irregular  # unpacked elements
        else:
            pos = _skip(payload, pos, wire_type)
        if pos > end:
            raise _Irregular
    return chunks, [_int32(d) for d in dims], has_shape


def _int32(value: int) -> int:
    """The int32 a decoded varint stands for (its low 32 bits, signed)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _shape_field(shape: tuple[int, ...]) -> bytes:
    """Field 2 (``MatrixShape``, unpacked int32 dims) of a matrix message, or b"" for a 0-d array."""
    if not shape:
        return b""
    body = b"".join(b"\x08" + _varint(int(d)) for d in shape)
    return b"\x12" + _varint(len(body)) + body


def _reshape(data: np.ndarray, dims: list[int], has_shape: bool) -> np.ndarray:
    if not has_shape or not dims:
        return data
    if int(np.prod(dims)) != data.size:
        raise ValueError(f"matrix of {data.size} values with shape {dims}")
    return data.reshape(dims)


def _compress(parts: list[Any], level: int) -> bytes:
    c = zlib.compressobj(level)
    out = [c.compress(p) for p in parts]
    out.append(c.flush())
    return b"".join(out)


def matrix_float_bytes(array: np.ndarray) -> bytes:
    """Serialized ``dataset_pb2.MatrixFloat`` of ``array`` (data as float32, shape = array.shape), uncompressed."""
    a = np.ascontiguousarray(array, dtype="<f4")
    head = b"\x0a" + _varint(a.nbytes) if a.size else b""
    return head + a.tobytes() + _shape_field(a.shape)


def encode_matrix_float(array: np.ndarray, level: int = DEFAULT_ZLIB_LEVEL) -> bytes:
    """The ``*_compressed`` bytes of ``array``: zlib (``level``) of its serialized ``MatrixFloat``.

    ``array`` is stored as float32 with ``shape.dims = array.shape`` (e.g. ``(H, W, 4)``
    for a range image, ``(H, W, 6)`` for a pixel pose).
    """
    a = np.ascontiguousarray(array, dtype="<f4")
    head = b"\x0a" + _varint(a.nbytes) if a.size else b""
    return _compress([head, a.reshape(-1).view(np.uint8), _shape_field(a.shape)], level)


def decode_matrix_float(data: bytes) -> np.ndarray:
    """Decode a ``*_compressed`` ``MatrixFloat``: float32 array of its ``shape.dims`` (1-D without a shape)."""
    payload = zlib.decompress(data)
    try:
        chunks, dims, has_shape = _parse_matrix(payload)
        if any((e - s) % 4 or e > len(payload) for s, e in chunks):
            raise _Irregular
        values = [np.frombuffer(payload, dtype="<f4", count=(e - s) // 4, offset=s) for s, e in chunks]
        flat = np.concatenate(values).astype(np.float32) if values else np.zeros(0, np.float32)
    except _Irregular:
        m = dataset_pb2.MatrixFloat()
        m.ParseFromString(payload)
        flat = np.asarray(m.data, dtype=np.float32)
        dims, has_shape = list(m.shape.dims), m.HasField("shape")
    return _reshape(flat, dims, has_shape)


def matrix_int32_bytes(array: np.ndarray) -> bytes:
    """Serialized ``dataset_pb2.MatrixInt32`` of ``array`` (data as int32, shape = array.shape), uncompressed."""
    a = np.ascontiguousarray(array, dtype=np.int32)
    body = _encode_varints(a)
    head = b"\x0a" + _varint(len(body)) if a.size else b""
    return head + body + _shape_field(a.shape)


def encode_matrix_int32(array: np.ndarray, level: int = DEFAULT_ZLIB_LEVEL) -> bytes:
    """The ``*_compressed`` bytes of ``array``: zlib (``level``) of its serialized ``MatrixInt32``.

    Used for camera projections ``(H, W, 6)`` and segmentation labels ``(H, W, 2)``.
    """
    return zlib.compress(matrix_int32_bytes(array), level)


@functools.lru_cache(maxsize=64)
def encode_zeros_int32(shape: tuple[int, ...], level: int = DEFAULT_ZLIB_LEVEL) -> bytes:
    """``encode_matrix_int32(np.zeros(shape, int32), level)``, cached (all-zero camera projections)."""
    return encode_matrix_int32(np.zeros(shape, dtype=np.int32), level)


def decode_matrix_int32(data: bytes) -> np.ndarray:
    """Decode a ``*_compressed`` ``MatrixInt32``: int32 array of its ``shape.dims`` (1-D without a shape)."""
    payload = zlib.decompress(data)
    try:
        chunks, dims, has_shape = _parse_matrix(payload)
        if any(e > len(payload) for _, e in chunks):
            raise _Irregular
        raw = np.frombuffer(payload, dtype=np.uint8)
        flat = _decode_varints(np.concatenate([raw[s:e] for s, e in chunks]) if chunks else raw[:0])
    except _Irregular:
        m = dataset_pb2.MatrixInt32()
        m.ParseFromString(payload)
        flat = np.asarray(m.data, dtype=np.int32)
        dims, has_shape = list(m.shape.dims), m.HasField("shape")
    return _reshape(flat, dims, has_shape)
