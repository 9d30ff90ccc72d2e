"""TFRecord framing, without TensorFlow.

A TFRecord file is a sequence of records, each laid out as::

    uint64 length (little endian)
    uint32 masked_crc32c(length bytes)
    byte   data[length]
    uint32 masked_crc32c(data)

with ``masked_crc(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2**32)`` and
``crc`` the CRC-32C (Castagnoli) of ``x``. Waymo segments are such files of
serialized ``dataset_pb2.Frame`` records.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import google_crc32c

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_HEADER = 12  # uint64 length + uint32 crc
_FOOTER = 4  # uint32 crc


class TFRecordError(ValueError):
    """A TFRecord file is truncated or fails a CRC check; the message names the file."""


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """The masked CRC-32C TFRecord stores for ``data`` (a uint32)."""
    crc = google_crc32c.value(data if isinstance(data, bytes) else bytes(data))
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def _frame(record: bytes | bytearray | memoryview) -> tuple[bytes, bytes]:
    """The header (length + its masked CRC) and the footer (masked CRC of the data) of one record."""
    length = _LENGTH.pack(len(record))
    return length + _CRC.pack(masked_crc32c(length)), _CRC.pack(masked_crc32c(record))


def _record_length(path: Path, index: int, offset: int, header: bytes) -> int:
    """The data length of a record from its 12-byte header, checking the length CRC."""
    if len(header) < _HEADER:
        raise TFRecordError(
            f"{path}: record {index} at byte {offset}: truncated header ({len(header)} of {_HEADER} bytes)"
        )
    (length,) = _LENGTH.unpack_from(header, 0)
    (length_crc,) = _CRC.unpack_from(header, 8)
    if masked_crc32c(header[:8]) != length_crc:
        raise TFRecordError(f"{path}: record {index} at byte {offset}: length CRC mismatch")
    return length


def _read_data(f, length: int, where: str) -> bytes:  # noqa: ANN001
    """A record's data and footer at the file position, checking the data CRC."""
    data = f.read(length)
    if len(data) < length:
        raise TFRecordError(f"{where}: truncated data ({len(data)} of {length} bytes)")
    footer = f.read(_FOOTER)
    if len(footer) < _FOOTER:
        raise TFRecordError(f"{where}: truncated data CRC")
    (data_crc,) = _CRC.unpack(footer)
    if masked_crc32c(data) != data_crc:
        raise TFRecordError(f"{where}: data CRC mismatch")
    return data


def write_records(path: Path, records: Iterable[bytes]) -> None:
    """Write ``records`` as a TFRecord file at ``path``, atomically.

    The records are streamed into a temporary file in the same folder, which then
    replaces ``path`` (``os.replace``); on any error the temporary file is removed
    and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would otherwise become the segment's mode
        with os.fdopen(fd, "wb") as f:
            for record in records:
                header, footer = _frame(record)
                f.write(header)
                f.write(record)
                f.write(footer)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def iter_records(path: Path) -> Iterator[bytes]:
    """Yield the records of the TFRecord file at ``path``, verifying both CRCs of each.

    Raises:
        TFRecordError: on a truncated record or a CRC mismatch; the message names
            the file, the record index and the byte offset of the record.
    """
    path = Path(path)
    with open(path, "rb") as f:
        index = 0
        offset = 0
        while True:
            header = f.read(_HEADER)
            if not header:
                return
            length = _record_length(path, index, offset, header)
            yield _read_data(f, length, f"{path}: record {index} at byte {offset}")
            index += 1
            offset += _HEADER + length + _FOOTER


def record_offsets(path: Path) -> list[tuple[int, int]]:
    """``(byte offset, data length)`` of each record of the TFRecord file at ``path``.

    Cheap: reads only the 12-byte headers and seeks over the data, checking each
    length CRC and that every record (data and its CRC) lies within the file; the
    data CRCs are left to ``read_record``.

    Raises:
        TFRecordError: a truncated record or a length CRC mismatch; the message names
            the file, the record index and its byte offset.
    """
    path = Path(path)
    out: list[tuple[int, int]] = []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while offset < size:
            index = len(out)
            f.seek(offset)
            header = f.read(_HEADER)
            length = _record_length(path, index, offset, header)
            end = offset + _HEADER + length + _FOOTER
            if end > size:
                have = max(0, min(length, size - offset - _HEADER))
                what = f"truncated data ({have} of {length} bytes)" if have < length else "truncated data CRC"
                raise TFRecordError(f"{path}: record {index} at byte {offset}: {what}")
            out.append((offset, length))
            offset = end
    return out


def read_record(path: Path, offset: int, index: int | None = None) -> bytes:
    """The data of the record whose header starts at byte ``offset`` (from ``record_offsets``).

    Both CRCs are verified. ``index`` only serves the error messages.

    Raises:
        TFRecordError: truncated record or CRC mismatch, naming the file, the record
            (``index`` when given) and the offset.
    """
    path = Path(path)
    where = f"{path}: record {index if index is not None else '?'} at byte {offset}"
    with open(path, "rb") as f:
        f.seek(offset)
        header = f.read(_HEADER)
        if len(header) < _HEADER:
            raise TFRecordError(f"{where}: truncated header ({len(header)} of {_HEADER} bytes)")
        (length,) = _LENGTH.unpack_from(header, 0)
        (length_crc,) = _CRC.unpack_from(header, 8)
        if masked_crc32c(header[:8]) != length_crc:
            raise TFRecordError(f"{where}: length CRC mismatch")
        return _read_data(f, length, where)
