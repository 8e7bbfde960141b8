"""TFRecord framing, as TensorBoard's event files use it: each record is a little-endian
uint64 length, the masked CRC-32C of those 8 bytes, the data, the masked CRC-32C of the
data. Reads and writes frames only; what is inside is ``tfevents``' business.

CRC-32C comes from the ``crc32c`` package (C, hardware-accelerated: steppe[import]) when it
is installed; the table-driven fallback below is correct but ~100x slower, fine for small
logs and tests of the framing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")


def _table() -> list[int]:
    poly = 0x82F63B78  # Castagnoli, reflected
    out = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        out.append(c)
    return out


_TABLE = _table()


def _crc32c_python(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _fast() -> Callable[[bytes], int] | None:
    try:
        import crc32c  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    fn: Callable[[bytes], int] = crc32c.crc32c
    return fn


crc32c: Callable[[bytes], int] = _fast() or _crc32c_python
ACCELERATED = crc32c is not _crc32c_python


def masked_crc(data: bytes) -> int:
    """TFRecord's mask: rotate right by 15 bits, add a constant (mod 2**32).

    >>> hex(masked_crc(b"")), hex(crc32c(b"123456789"))
    ('0xa282ead8', '0xe3069283')
    """
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One record as it goes into a file."""
    length = struct.pack("<Q", len(data))
    return length + _FOOTER.pack(masked_crc(length)) + data + _FOOTER.pack(masked_crc(data))


@dataclass
class Corrupt:
    """A record that failed its check: where, and why."""

    offset: int
    reason: str


def records(f: BinaryIO, check: bool = True) -> Iterator[bytes | Corrupt]:
    """The records of a file in order. A bad data CRC yields a Corrupt and reading goes on
    with the next record (the framing is intact); a bad length CRC or a cut-off record
    yields a Corrupt and ends the file: nothing after it can be located safely."""
    offset = 0
    read = f.read
    while True:
        header = read(12)
        if not header:
            return
        if len(header) < 12:
            yield Corrupt(offset, f"file ends inside a record header ({len(header)} of 12 bytes)")
            return
        length, length_crc = _HEADER.unpack(header)
        if check and masked_crc(header[:8]) != length_crc:
            yield Corrupt(offset, "length CRC mismatch; the rest of the file is skipped")
            return
        body = read(length + 4)
        if len(body) < length + 4:
            yield Corrupt(offset, f"file ends inside a record ({len(body)} of {length + 4} bytes)")
            return
        data = body[:length]
        if check and masked_crc(data) != _FOOTER.unpack_from(body, length)[0]:
            yield Corrupt(offset, "data CRC mismatch; record skipped")
        else:
            yield data
        offset += 12 + length + 4
