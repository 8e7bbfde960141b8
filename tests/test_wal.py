"""The write-ahead log: framing round trip, group commit, torn/corrupt tails, failure."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from steppe.ingest import wal as wal_module
from steppe.ingest.layout import wal_file_name
from steppe.ingest.wal import (
    HEADER,
    WalFailed,
    WriteAheadLog,
    list_segments,
    read_segment,
)


def payloads(n: int) -> list[bytes]:
    # Varied sizes, including empty, so framing bugs show up.
    return [bytes([i % 251]) * ((i * 37) % 1000) for i in range(n)]


def recovered(directory: Path) -> list[bytes]:
    return [p for _, path in list_segments(directory) for p in read_segment(path)]


@pytest.fixture
def fsync_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads that fsynced WAL segments, in call order."""
    calls: list[str] = []
    real: Callable[[int], None] = wal_module._fdatasync

    def counting(fd: int) -> None:
        calls.append(threading.current_thread().name)
        real(fd)

    monkeypatch.setattr(wal_module, "_fdatasync", counting)
    return calls


async def test_round_trip_across_segments(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, first_segment=7)
    data = payloads(50)
    positions = [wal.append(p) for p in data[:20]]
    assert wal.rotate() == 7
    positions += [wal.append(p) for p in data[20:]]
    await wal.sync()
    await wal.close()

    assert [p.lsn for p in positions] == list(range(1, 51))
    assert {p.segment for p in positions[:20]} == {7}
    assert {p.segment for p in positions[20:]} == {8}
    assert [n for n, _ in list_segments(tmp_path)] == [7, 8]
    assert recovered(tmp_path) == data

    wal2 = WriteAheadLog(tmp_path, first_segment=9)
    assert wal2.delete_segments(7) == [7]
    assert recovered(tmp_path) == data[20:]
    await wal2.close()


async def test_group_commit_one_fsync_covers_every_earlier_append(
    tmp_path: Path, fsync_calls: list[str]
) -> None:
    durable: list[int] = []
    wal = WriteAheadLog(tmp_path, first_segment=1, on_durable=durable.append)
    for p in payloads(100):
        wal.append(p)
    assert wal.durable_lsn == 0  # appends only buffer
    await wal.sync()
    assert wal.durable_lsn == 100
    assert wal.commits == 1
    assert durable == [100]
    assert len(fsync_calls) == 1
    # The fsync ran in a worker thread, never on the event loop's thread.
    assert fsync_calls[0] != threading.current_thread().name

    # Appends made while a commit is in flight are covered by the next single commit.
    first = wal.append(b"a")
    pending = wal.sync()
    for p in payloads(10):
        wal.append(p)
    await pending
    assert wal.durable_lsn >= first.lsn
    await wal.sync()
    assert wal.durable_lsn == 111
    assert wal.commits <= 3
    assert len(fsync_calls) == wal.commits
    await wal.close()
    assert len(recovered(tmp_path)) == 111


async def test_sync_with_nothing_pending_is_immediate(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, first_segment=1)
    assert wal.sync().done()
    await wal.close()
    assert list_segments(tmp_path) == []


async def write_segment(directory: Path, data: list[bytes]) -> Path:
    wal = WriteAheadLog(directory, first_segment=1)
    for p in data:
        wal.append(p)
    await wal.close()
    return directory / wal_file_name(1)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[:-5], id="torn-payload"),
        pytest.param(lambda b: b[: len(b) - 300 + 7], id="torn-header"),
        pytest.param(lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]), id="bad-crc"),
        pytest.param(lambda b: b + b"\x00" * 5, id="trailing-garbage"),
        pytest.param(lambda b: b + b"junkjunkjunkjunk", id="bad-magic"),
    ],
)
async def test_damaged_tail_is_skipped_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Callable[[bytes], bytes]
) -> None:
    data = [b"x" * 100, b"y" * 200, b"z" * (300 - HEADER.size)]
    path = await write_segment(tmp_path, data)
    raw = path.read_bytes()
    assert len(raw) == 600 + 2 * HEADER.size
    path.write_bytes(damage(raw))

    with caplog.at_level(logging.WARNING, logger="steppe.ingest.wal"):
        got = list(read_segment(path))
    complete = 3 if len(damage(raw)) > len(raw) else 2
    assert got == data[:complete]
    assert any(path.name in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


async def test_corrupt_record_header_length_is_detected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = [b"a" * 50, b"b" * 50]
    path = await write_segment(tmp_path, data)
    raw = bytearray(path.read_bytes())
    # Corrupt the second record's length field so it claims a huge payload.
    raw[HEADER.size + 50 + 4 : HEADER.size + 50 + 8] = (2**31).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="steppe.ingest.wal"):
        assert list(read_segment(path)) == data[:1]
    assert "torn record" in caplog.text


async def test_fsync_failure_poisons_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(wal_module, "_fdatasync", failing)
    failures: list[BaseException] = []
    wal = WriteAheadLog(tmp_path, first_segment=1, on_failure=failures.append)
    wal.append(b"doomed")
    with (
        caplog.at_level(logging.CRITICAL, logger="steppe.ingest.wal"),
        pytest.raises(WalFailed, match="Input/output error"),
    ):
        await wal.sync()
    assert wal.durable_lsn == 0
    assert len(failures) == 1
    with pytest.raises(WalFailed):
        wal.append(b"more")
    await wal.close()


async def test_segment_numbers_are_never_reused(tmp_path: Path) -> None:
    (tmp_path / wal_file_name(1)).write_bytes(b"")
    wal = WriteAheadLog(tmp_path, first_segment=1)
    wal.append(b"x")
    with pytest.raises(WalFailed, match="FileExistsError"):
        await wal.sync()
    await wal.close()
    assert os.path.getsize(tmp_path / wal_file_name(1)) == 0


async def test_short_gathered_writes_are_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel may write less than asked (signals, quotas): every byte must still land,
    # in order, also across more buffers than one writev call takes.
    real = os.writev

    def short(fd: int, buffers: list[memoryview]) -> int:
        return real(fd, [memoryview(b"".join(buffers[:3]))[:7]])

    monkeypatch.setattr(os, "writev", short)
    monkeypatch.setattr(wal_module, "_IOV_MAX", 5)
    wal = WriteAheadLog(tmp_path, 1)
    sent = payloads(40)
    for payload in sent:
        wal.append(payload)
    await wal.sync()
    await wal.close()
    assert recovered(tmp_path) == sent
