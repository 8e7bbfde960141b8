"""Background compaction: merges runs of adjacent small metrics files into one sorted file.

Never blocks ingest or readers: merging runs in a worker thread, the swap is one loop step, and
replaced files are deleted only after a grace period (a reader may hold a snapshot naming them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from steppe.ingest.layout import metrics_file_name
from steppe.ingest.metrics_files import (
    Part,
    read_metrics_file_encoded,
    sort_metrics,
    write_metrics_file,
)
from steppe.ingest.store import MetricStore
from steppe.ingest.tiers import remove_tiers, try_write_tiers

__all__ = ["Compactor"]

logger = logging.getLogger("steppe.ingest.compactor")


def _merge(parts: Sequence[Part], directory: Path) -> Part:
    # Worker thread. Concatenating in segment order and sorting stably keeps equal points in
    # arrival order, which the latest summary's tie-break relies on when rebuilt from files.
    # Dictionary-encoded throughout (about 32 bytes per point in, as much out) and sorted by
    # integer series rank: no string per point is ever built or compared.
    merged = sort_metrics(pa.concat_tables([read_metrics_file_encoded(p.path) for p in parts]))
    first, last = parts[0].first, parts[-1].last
    path = directory / metrics_file_name(first, last)
    write_metrics_file(merged, path)
    try_write_tiers(merged, path)
    return Part(first, last, path, path.stat().st_size, merged.num_rows)


class Compactor:
    """Merges >= ``min_files`` adjacent small files of ``store`` into ``part-<first>-<last>``.

    Only adjacent files are merged: the merged name claims the whole segment range, and on
    startup any file inside a larger file's range is treated as already compacted. Only files
    the latest summary already covers are eligible, so a crash never leaves a merged file
    straddling latest.parquet's recorded segment. A merge holds its points in memory (about
    100 bytes each at its peak: inputs, sorted copy, ranks), so ``max_merge_rows`` bounds it
    whatever the files' bytes (2M points: about +210 MiB).

        compactor = Compactor(store, grace_s=60)
        compactor.start()            # background; store.on_flushed = compactor.nudge
        await compactor.close()
    """

    def __init__(
        self,
        store: MetricStore,
        directory: Path,
        *,
        min_files: int = 8,
        max_files: int = 64,
        small_file_bytes: int = 16 << 20,
        max_merge_bytes: int = 128 << 20,
        small_file_rows: int = 256 * 1024,
        max_merge_rows: int = 2 * 1024 * 1024,
        grace_s: float = 60.0,
        interval_s: float = 30.0,
    ) -> None:
        self._store = store
        self._dir = directory
        self._min_files = max(2, min_files)
        self._max_files = max(self._min_files, max_files)
        self._small_file_bytes = small_file_bytes
        self._max_merge_bytes = max_merge_bytes
        self._small_file_rows = small_file_rows
        self._max_merge_rows = max(small_file_rows, max_merge_rows)
        self._grace_s = grace_s
        self._interval_s = interval_s
        self._wanted = asyncio.Event()
        self._doomed: list[tuple[float, list[Path]]] = []
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        #: Files merged so far (for logs and tests).
        self.merged_files = 0

    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="steppe-compactor"
            )

    def nudge(self) -> None:
        """Look for work now (called after each flush)."""
        self._wanted.set()

    def candidates(self) -> list[Part]:
        """The first run of adjacent, settled, small files long enough to merge ([] if none)."""
        run: list[Part] = []
        run_bytes = run_rows = 0
        for part in self._store.parts:
            small = (
                part.size < self._small_file_bytes
                and 0 <= part.rows < self._small_file_rows
                and part.last <= self._store.latest_segment
            )
            fits = (
                run_bytes + part.size <= self._max_merge_bytes
                and run_rows + part.rows <= self._max_merge_rows
                and len(run) < self._max_files
            )
            if small and fits:
                run.append(part)
                run_bytes += part.size
                run_rows += part.rows
                continue
            if len(run) >= self._min_files:
                return run
            run, run_bytes, run_rows = ([part], part.size, part.rows) if small else ([], 0, 0)
        return run if len(run) >= self._min_files else []

    async def compact_once(self) -> Part | None:
        """Merge one run of small files if there is one; returns the new part."""
        async with self._lock:
            group = self.candidates()
            if not group:
                return None
            new = await asyncio.to_thread(_merge, group, self._dir)
            self._store.replace_parts(group, new)
            self.merged_files += len(group)
            logger.info("compacted %d files into %s", len(group), new.path.name)
            self._doomed.append((time.monotonic() + self._grace_s, [p.path for p in group]))
            self._delete_due()
            return new

    def _delete_due(self) -> None:
        now = time.monotonic()
        keep = []
        for deadline, paths in self._doomed:
            if deadline <= now:
                for path in paths:
                    path.unlink(missing_ok=True)
                    remove_tiers(path)
            else:
                keep.append((deadline, paths))
        self._doomed = keep

    async def _run(self) -> None:
        while not self._closed:
            timeout = self._interval_s
            if self._doomed:
                timeout = min(timeout, max(0.0, self._doomed[0][0] - time.monotonic()))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), timeout)
            self._wanted.clear()
            if self._closed:
                return
            self._delete_due()
            try:
                while not self._closed and await self.compact_once() is not None:
                    pass
            except Exception:  # the inputs stay live and readable; try again later
                logger.exception("compaction failed; will retry")

    async def close(self) -> None:
        """Stop; replaced files whose grace has not passed are removed on the next start."""
        self._closed = True
        self._wanted.set()
        if self._task is not None:
            await self._task
        async with self._lock:
            self._delete_due()
