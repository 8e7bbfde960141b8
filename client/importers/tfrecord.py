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


def records(
    f: BinaryIO, check: bool = True, buffer_bytes: int = 8 << 20
) -> Iterator[bytes | Corrupt]:
    """The records of a file in order. A bad data CRC yields a Corrupt and reading goes on
    with the next record (the framing is intact); a bad length CRC or a cut-off record
    yields a Corrupt and ends the file: nothing after it can be located safely.

    The file is read ``buffer_bytes`` at a time and framed in memory (a record larger than
    that is read whole)."""
    crc = crc32c
    unpack_header = _HEADER.unpack_from
    unpack_footer = _FOOTER.unpack_from
    buffer = b""
    at = 0  # position in buffer
    base = 0  # file offset of buffer[0]
    eof = False
    while True:
        while len(buffer) - at < 12 and not eof:
            more = f.read(buffer_bytes)
            eof = not more
            buffer, base, at = buffer[at:] + more, base + at, 0
        if len(buffer) - at == 0:
            return
        if len(buffer) - at < 12:
            yield Corrupt(
                base + at, f"file ends inside a record header ({len(buffer) - at} of 12 bytes)"
            )
            return
        length, length_crc = unpack_header(buffer, at)
        if check:
            masked = crc(buffer[at : at + 8])
            masked = (((masked >> 15) | (masked << 17)) + _MASK_DELTA) & 0xFFFFFFFF
            if masked != length_crc:
                yield Corrupt(base + at, "length CRC mismatch; the rest of the file is skipped")
                return
        end = at + 12 + length + 4
        while len(buffer) < end and not eof:
            more = f.read(max(buffer_bytes, end - len(buffer)))
            eof = not more
            buffer, base, end, at = buffer[at:] + more, base + at, end - at, 0
        if len(buffer) < end:
            yield Corrupt(
                base + at,
                f"file ends inside a record ({len(buffer) - at - 12} of {length + 4} bytes)",
            )
            return
        data = buffer[at + 12 : end - 4]
        if check:
            masked = crc(data)
            masked = (((masked >> 15) | (masked << 17)) + _MASK_DELTA) & 0xFFFFFFFF
        if check and masked != unpack_footer(buffer, end - 4)[0]:
            yield Corrupt(base + at, "data CRC mismatch; record skipped")
        else:
            yield data
        at = end
