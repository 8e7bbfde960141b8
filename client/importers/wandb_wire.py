"""The door to W&B's transaction log (``run-<id>.wandb``): its LevelDB-style framing and
our subset of its Record protos (``steppe.v1.wandb_records_pb2``). Decodes bytes into
plain values; reads no folders.

The framing (wandb's datastore): a 7-byte file header (``:W&B``, magic 0xBEE1 as uint16,
version 0), then 32 KiB blocks of records, each a header of uint32 CRC-32 (zlib's, seeded
with the CRC of the type byte) + uint16 length + uint8 type (FULL 1, FIRST 2, MIDDLE 3,
LAST 4) and its data; a block's last < 7 bytes are zero padding. A record split over
blocks is FIRST, MIDDLE..., LAST.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from steppe.v1 import wandb_records_pb2 as pb

HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
_BLOCK = 32768
_RECORD = struct.Struct("<IHB")
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_SEED = {t: zlib.crc32(bytes([t])) for t in (_FULL, _FIRST, _MIDDLE, _LAST)}


@dataclass
class Broken:
    offset: int
    reason: str


def records(f: BinaryIO) -> Iterator[bytes | Broken]:
    """The whole records of a log, in order. A record failing its CRC is reported and
    skipped; an unknown header or a cut-off record ends the file."""
    data = f.read()
    if data[:7] != HEADER:
        yield Broken(0, "not a W&B transaction log (bad file header)")
        return
    at = 7
    pending: bytes | None = None
    while at < len(data):
        left = _BLOCK - at % _BLOCK
        if left < _RECORD.size:
            at += left  # the block's zero padding
            continue
        if at + _RECORD.size > len(data):
            yield Broken(at, "file ends inside a record header")
            return
        crc, length, kind = _RECORD.unpack_from(data, at)
        start = at + _RECORD.size
        chunk = data[start : start + length]
        if len(chunk) < length:
            yield Broken(at, "file ends inside a record")
            return
        at = start + length
        if kind == 0 and length == 0 and crc == 0:
            continue  # zeros: a preallocated or padded tail
        if kind not in _SEED or zlib.crc32(chunk, _SEED[kind]) != crc:
            yield Broken(start - _RECORD.size, "record CRC mismatch; record skipped")
            pending = None
            continue
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif pending is not None:
            pending += chunk
            if kind == _LAST:
                yield pending
                pending = None


def frame(payloads: list[bytes]) -> bytes:
    """A transaction log holding these records (for tests of the framing)."""
    out = bytearray(HEADER)
    for payload in payloads:
        rest = payload
        first = True
        while True:
            left = _BLOCK - len(out) % _BLOCK
            if left < _RECORD.size:
                out += bytes(left)
                left = _BLOCK
            room = left - _RECORD.size
            piece, rest = rest[:room], rest[room:]
            kind = (_FULL if first else _LAST) if not rest else (_FIRST if first else _MIDDLE)
            out += _RECORD.pack(zlib.crc32(piece, _SEED[kind]), len(piece), kind) + piece
            first = False
            if not rest:
                break
    return bytes(out)


@dataclass
class Run:
    run_id: str = ""
    project: str = ""
    name: str = ""
    notes: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    start_ms: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None


@dataclass
class Row:
    """One history row: its step, wall time (s) and numeric values by key."""

    step: int
    timestamp_s: float | None
    values: dict[str, float]
    skipped: int  # non-numeric values (media, tables, histograms, text)


def _name(key: str, nested: Any) -> str:
    return key or ".".join(nested)


def _item_value(item: pb.HistoryItem) -> Any:
    kind = item.WhichOneof("typed")
    if kind is not None and kind != "none":
        value = getattr(item, kind)
        return json.loads(value) if kind == "json" else value
    if item.value_json:
        return json.loads(item.value_json)
    return None


def decode(data: bytes, run: Run) -> Row | None:
    """Fold one record into ``run`` (run, config, exit) or return its history row."""
    record = pb.Record.FromString(data)
    kind = record.WhichOneof("record_type")
    if kind == "run":
        r = record.run
        run.run_id, run.project, run.name = r.run_id, r.project, r.display_name
        run.notes, run.group, run.job_type = r.notes, r.run_group, r.job_type
        run.tags = list(r.tags)
        if r.HasField("start_time"):
            run.start_ms = r.start_time.seconds * 1000 + r.start_time.nanos // 1_000_000
        _config(run, r.config)
    elif kind == "config":
        _config(run, record.config)
    elif kind == "exit":
        run.exit_code = record.exit.exit_code
    elif kind == "history":
        values: dict[str, float] = {}
        step: int | None = None
        stamp: float | None = None
        skipped = 0
        for item in record.history.item:
            name = _name(item.key, item.nested_key)
            value = _item_value(item)
            if name == "_step" and isinstance(value, int):
                step = value
            elif name == "_timestamp" and isinstance(value, (int, float)):
                stamp = float(value)
            elif name.startswith("_"):
                continue  # _runtime and wandb's own bookkeeping
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                skipped += 1
            else:
                values[name] = float(value)
        if step is None:
            step = record.history.step.num
        return Row(step, stamp, values, skipped)
    return None


def _config(run: Run, config: pb.ConfigRecord) -> None:
    for item in config.update:
        name = _name(item.key, item.nested_key)
        if name != "_wandb":
            run.config[name] = json.loads(item.value_json) if item.value_json else None
    for item in config.remove:
        run.config.pop(_name(item.key, item.nested_key), None)


def flat_params(config: dict[str, Any]) -> dict[str, str]:
    """W&B config as params: nested dicts flattened with '.', values as text (strings as
    they are, numbers and booleans as Python writes them, lists as JSON)."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and "value" in value and set(value) <= {"value", "desc"}:
            value = value["value"]  # wandb's on-disk config form {"value": ..., "desc": ...}
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, str):
            out[prefix] = value
        elif isinstance(value, (bool, int, float)) or value is None:  # nan/inf as Python
            out[prefix] = str(value)
        else:
            out[prefix] = json.dumps(value, sort_keys=True)

    for key, value in config.items():
        walk(key, value)
    return out
