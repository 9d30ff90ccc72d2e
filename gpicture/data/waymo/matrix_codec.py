"""The codecs of Waymo's compressed matrix fields, in numpy.

A ``*_compressed`` field of a ``dataset_pb2.RangeImage`` is the zlib stream of a serialized
``dataset_pb2.MatrixFloat`` / ``MatrixInt32`` (field 1: packed data, field 2: ``MatrixShape``
with repeated ``dims``). The protobuf wire format is written and parsed here directly with
numpy (byte-identical to protobuf's own) because pushing millions of values through the
protobuf runtime is slow; layouts the fast parser does not handle go to protobuf's parser.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
from waymo_open_dataset import dataset_pb2

DEFAULT_ZLIB_LEVEL = 6


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


def encode_matrix_float(array: np.ndarray, level: int = DEFAULT_ZLIB_LEVEL) -> bytes:
    """The ``*_compressed`` bytes of ``array``: zlib (``level``) of its serialized ``MatrixFloat``.

    ``array`` is stored as float32 with ``shape.dims = array.shape`` (e.g. ``(H, W, 4)``
    for a range image, ``(H, W, 6)`` for a pixel pose).
    """
    a = np.ascontiguousarray(array, dtype="<f4")
    head = b"\x0a" + _varint(a.nbytes) if a.size else b""
    return _compress([head, a.reshape(-1).view(np.uint8), _shape_field(a.shape)], level)


def _decode_matrix(data: bytes, values: Callable[[bytes, list[tuple[int, int]]], np.ndarray],
                   message: type, dtype: type) -> np.ndarray:
    """A ``*_compressed`` matrix: ``values(payload, data chunks)`` of the packed layout, reshaped to
    its ``shape.dims`` (1-D without a shape); any other layout through protobuf's ``message``."""
    payload = zlib.decompress(data)
    try:
        chunks, dims, has_shape = _parse_matrix(payload)
        flat = values(payload, chunks)
    except _Irregular:
        m = message()
        m.ParseFromString(payload)
        flat = np.asarray(m.data, dtype=dtype)
        dims, has_shape = list(m.shape.dims), m.HasField("shape")
    return _reshape(flat, dims, has_shape)


def _float_values(payload: bytes, chunks: list[tuple[int, int]]) -> np.ndarray:
    if any((e - s) % 4 or e > len(payload) for s, e in chunks):
        raise _Irregular
    values = [np.frombuffer(payload, dtype="<f4", count=(e - s) // 4, offset=s) for s, e in chunks]
    return np.concatenate(values).astype(np.float32) if values else np.zeros(0, np.float32)


def _int32_values(payload: bytes, chunks: list[tuple[int, int]]) -> np.ndarray:
    if any(e > len(payload) for _, e in chunks):
        raise _Irregular
    raw = np.frombuffer(payload, dtype=np.uint8)
    return _decode_varints(np.concatenate([raw[s:e] for s, e in chunks]) if chunks else raw[:0])


def decode_matrix_float(data: bytes) -> np.ndarray:
    """Decode a ``*_compressed`` ``MatrixFloat``: float32 array of its ``shape.dims`` (1-D without a shape)."""
    return _decode_matrix(data, _float_values, dataset_pb2.MatrixFloat, np.float32)


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
    return _decode_matrix(data, _int32_values, dataset_pb2.MatrixInt32, np.int32)
