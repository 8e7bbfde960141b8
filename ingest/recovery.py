"""Recovery of a data dir at start: the committed parts, the latest summary, the stream
watermarks, and the acked WAL records not yet in a Parquet file (replayed as tail chunks).

Runs once, in a worker thread, before the store accepts writes; never crashes on what was
acked: undecodable or out-of-range records are logged and skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from steppe.errors import InvalidParameterValue
from steppe.ingest import wire
from steppe.ingest.catalog import StreamWatermarks
from steppe.ingest.latest import (
    empty_latest,
    fold_latest,
    read_latest_file,
    summarize_points,
    write_latest_file,
)
from steppe.ingest.layout import (
    METRICS_SCHEMA,
    DataDir,
)
from steppe.ingest.metrics_files import (
    Part,
    as_dictionary_table,
    read_metrics_file_encoded,
    temp_path,
)
from steppe.ingest.wal import (
    fsync_dir,
    list_segments,
    read_segment,
)

logger = logging.getLogger("steppe.ingest.recovery")

#: The highest seq a stream may use: watermarks are stored as SQLite (signed 64-bit) INTEGERs.
MAX_SEQ = 2**63 - 1
#: Stream ids with this prefix belong to the server; a client batch on one is refused.
RESERVED_STREAM_PREFIX = "steppe-server-"
#: The server's own streams count from 1 and could not reach this in millennia: a higher
#: seq on one came from a client of an older steppe (which did not refuse them).
_MAX_RESERVED_SEQ = 2**62


@dataclass
class Chunk:
    """Acked points of one WAL segment, applied together (TAIL_SCHEMA, one record batch per
    WAL record); ``watermarks`` = highest seq per stream among them; ``summary`` = their
    unfolded LATEST_SCHEMA summaries (see summarize_points)."""

    segment: int
    table: pa.Table
    watermarks: dict[str, int]
    summary: pa.Table
    #: METRICS_SCHEMA copy made by the first snapshot that needs it (queries see strings).
    expanded: pa.Table | None = None
    #: Memory held: the table, plus the expanded copy once made.
    nbytes: int = 0

    def __post_init__(self) -> None:
        self.nbytes = self.table.nbytes

    def as_metrics(self) -> pa.Table:
        if self.expanded is None:
            self.expanded = self.table.cast(METRICS_SCHEMA)
            self.nbytes += self.expanded.nbytes
        return self.expanded


@dataclass
class Recovered:
    parts: list[Part]
    latest_flushed: pa.Table
    latest_segment: int
    watermarks: dict[str, int]
    chunks: list[Chunk] = field(default_factory=list)
    next_segment: int = 1
    #: Lowest replayed segment (the next flush covers it even if it held no points).
    first_unflushed: int = 1 << 62


def _live_parts(metrics_dir: Path) -> list[Part]:
    """Committed parts, minus temp files and parts a compaction already replaced (a crash
    can leave both the merged file and its inputs; the merged one covers their range)."""
    parts: list[Part] = []
    for path in metrics_dir.iterdir():
        if path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)
            continue
        part = Part.at(path)
        if part is not None:
            parts.append(part)
    live = []
    for part in parts:
        if any(other.covers(part) for other in parts):
            logger.info("removing %s: a compacted file covers it", part.path.name)
            part.path.unlink(missing_ok=True)
        else:
            live.append(part)
    return sorted(live, key=lambda p: p.first)


def _drop_orphan_tiers(tiers_dir: Path, live: set[str]) -> None:
    """Remove tier files whose metrics file is gone (a crash between the two deletes) and
    temp files: a tier file never outlives the points it summarises."""
    if not tiers_dir.is_dir():
        return
    for path in tiers_dir.iterdir():
        if path.name not in live:
            path.unlink(missing_ok=True)


def _recover_latest(data_dir: DataDir, parts: list[Part], max_segment: int) -> pa.Table:
    existing = read_latest_file(data_dir.latest_file)
    if existing is not None and existing[1] == max_segment:
        return existing[0]
    if (
        existing is not None
        and existing[1] < max_segment
        and all(p.last <= existing[1] or p.first > existing[1] for p in parts)
    ):
        # A crash between a file's rename and the summary's rewrite: fold in the newer files.
        latest, newer = existing[0], [p for p in parts if p.first > existing[1]]
    else:
        latest, newer = empty_latest(), parts
    if not parts and existing is None:
        return latest
    for part in newer:
        points = read_metrics_file_encoded(part.path)
        latest = fold_latest([latest, summarize_points(points, series_sorted=True)])
    write_latest_file(latest, data_dir.latest_file, max_segment)
    logger.info("rebuilt %s from %d metrics file(s)", data_dir.latest_file.name, len(newer))
    return latest


def _storable_seq(stream_id: str, seq: object, where: str, warned: set[str]) -> bool:
    """Whether a recovered (stream id, seq) may become a watermark. An older steppe acked
    batches with a seq past MAX_SEQ (SQLite cannot store it, so every flush failed) and
    client batches on the server's own stream ids; their points are kept, but such a seq
    never becomes a watermark: a resend of it is refused at the door (never stored twice),
    and the server's own seqs keep counting from their real watermark."""
    limit = _MAX_RESERVED_SEQ if stream_id.startswith(RESERVED_STREAM_PREFIX) else MAX_SEQ
    if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= limit:
        return True
    if stream_id in warned:
        return False
    warned.add(stream_id)  # one warning per stream, however many records
    logger.warning(
        "%s: ignoring seq %r of stream %r as a watermark (out of range; written by an older "
        "steppe); its points are kept",
        where,
        seq,
        stream_id,
    )
    return False


def recover(data_dir: DataDir, catalog: StreamWatermarks) -> Recovered:
    """Blocking recovery of the on-disk state (see MetricStore for the protocol)."""
    data_dir.metrics_dir.mkdir(parents=True, exist_ok=True)
    data_dir.wal_dir.mkdir(parents=True, exist_ok=True)
    temp_path(data_dir.latest_file).unlink(missing_ok=True)
    parts = _live_parts(data_dir.metrics_dir)
    _drop_orphan_tiers(data_dir.tiers_dir, {p.path.name for p in parts})
    max_segment = max((p.last for p in parts), default=0)
    latest = _recover_latest(data_dir, parts, max_segment)
    warned: set[str] = set()
    watermarks = {
        stream_id: seq
        for stream_id, seq in catalog.stream_watermarks().items()
        if _storable_seq(stream_id, seq, "catalog", warned)
    }
    segments = list_segments(data_dir.wal_dir)

    # Segments already in Parquet only contribute watermarks: a crash may have hit between
    # the file's rename and the watermark save. Save first, then delete them.
    flushed = [(n, path) for n, path in segments if n <= max_segment]
    held: dict[str, int] = {}
    for _, path in flushed:
        for payload in read_segment(path):
            stream_id, seq = wire.batch_position(payload)
            if _storable_seq(stream_id, seq, path.name, warned):
                held[stream_id] = max(held.get(stream_id, 0), seq)
    if held:
        catalog.save_stream_watermarks(held)
        for stream_id, seq in held.items():
            watermarks[stream_id] = max(watermarks.get(stream_id, 0), seq)
    for _, path in flushed:
        path.unlink(missing_ok=True)
    if flushed:
        fsync_dir(data_dir.wal_dir)

    recovered = Recovered(parts, latest, max_segment, watermarks)
    for number, path in segments:
        if number <= max_segment:
            continue
        recovered.first_unflushed = min(recovered.first_unflushed, number)
        tables: list[pa.Table] = []
        held = {}
        for payload in read_segment(path):
            batch = wire.parse_metric_batch(payload)
            if batch.seq <= watermarks.get(batch.stream_id, 0):
                # Never written twice by a live server; guards exactly-once regardless.
                logger.warning(
                    "WAL %s: dropping duplicate %s/%d", path.name, batch.stream_id, batch.seq
                )
                continue
            try:
                decoded = wire.decode_metric_batch(batch, max_points=1 << 62)
            except InvalidParameterValue as exc:  # validated before it was logged: corrupt
                logger.error("WAL %s: skipping undecodable record: %s", path.name, exc)
                continue
            if _storable_seq(batch.stream_id, batch.seq, path.name, warned):
                watermarks[batch.stream_id] = held[batch.stream_id] = batch.seq
            tables.append(as_dictionary_table(decoded.table))
        if tables:
            table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
            recovered.chunks.append(Chunk(number, table, held, summarize_points(table)))
    recovered.next_segment = max([max_segment, *(n for n, _ in segments)]) + 1
    recovered.first_unflushed = min(recovered.first_unflushed, recovered.next_segment)
    return recovered
