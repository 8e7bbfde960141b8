"""The metrics domain service: the rules every metric point obeys, whichever door it came in by.

A point names a run that exists and is active, a key that is a valid MLflow name, a step in
int64 and a timestamp in non-negative int64 ms; a run has at most MAX_METRIC_KEYS_PER_RUN
distinct keys. The gRPC stream (a decoded columnar batch) and the MLflow REST API (parallel
columns) both check through ``MetricRules``; neither has rules of its own. A batch is checked
whole before any of it counts against a budget, so a rejected batch changes nothing.

    rules = MetricRules(catalog, store.latest)
    table = rules.points_table(run_ids, keys, steps, timestamps, values)   # REST columns
    await rules.check(run_ids=..., keys=..., table=table)                  # either door
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from steppe.errors import InvalidParameterValue, ResourceDoesNotExist
from steppe.ingest.catalog import RunRepository
from steppe.ingest.layout import METRICS_SCHEMA
from steppe.validation import MAX_METRIC_KEYS_PER_RUN, check_name, check_run_id

__all__ = ["MetricRules", "check_timestamp"]

#: Names already checked are remembered up to this many (then the memo starts over).
_MAX_CACHED_KEYS = 100_000


def check_timestamp(field: str, timestamp: object) -> None:
    """A point's timestamp: an int in [0, 2^63), ms since the epoch (MLflow's rule)."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 <= timestamp < 2**63:
        raise InvalidParameterValue(
            field,
            timestamp,
            "timestamp must be a non-negative 64-bit integer (ms since the epoch)",
        )


class MetricRules:
    """Owns the metric rules and the caches that keep checking them cheap on the hot path:
    the runs known to be active, the key names known to be valid, each run's keys so far."""

    def __init__(self, runs: RunRepository, latest: Callable[[], pa.Table]) -> None:
        self._runs = runs
        self._latest = latest  # the store's latest summary: (run_id, key, ...) per key
        self._active_runs: set[str] = set()
        self._valid_keys: set[str] = set()
        self._run_keys: dict[str, set[str]] = {}

    # what the run service tells us --------------------------------------------------------

    def note_active_run(self, run_id: str) -> None:
        """A run was just created (active): points may go to it without a catalog lookup."""
        self._active_runs.add(run_id)

    def forget_runs(self, run_ids: Iterable[str]) -> None:
        """Runs were deleted: the next point logged to one is checked against the catalog."""
        for run_id in run_ids:
            self._active_runs.discard(run_id)

    # the checks ---------------------------------------------------------------------------

    async def check(self, *, run_ids: Sequence[str], keys: Sequence[str], table: pa.Table) -> None:
        """Every rule for one batch: ``run_ids`` and ``keys`` are its distinct runs and keys
        (a batch's dictionaries), ``table`` its METRICS_SCHEMA rows (dictionary-encoded or
        plain). Raises InvalidParameterValue for the first broken rule."""
        self._check_timestamps(table.column("timestamp"))
        self.check_keys(keys)
        await self.check_runs(run_ids)
        self._check_key_budget(run_ids, keys, table)

    @staticmethod
    def _check_timestamps(timestamps: pa.ChunkedArray) -> None:
        if len(timestamps) and pc.min(timestamps).as_py() < 0:
            negative = pc.less(timestamps, 0).combine_chunks()
            i = pc.index(negative, True).as_py()
            check_timestamp(f"timestamp_ms[{i}]", timestamps[i].as_py())

    def check_keys(self, keys: Iterable[str]) -> None:
        for i, key in enumerate(keys):
            if key not in self._valid_keys:
                check_name(f"keys[{i}]", key, "metric key")
                if len(self._valid_keys) >= _MAX_CACHED_KEYS:
                    self._valid_keys.clear()
                self._valid_keys.add(key)

    async def check_runs(self, run_ids: Iterable[str]) -> None:
        for i, run_id in enumerate(run_ids):
            if run_id in self._active_runs:
                continue
            check_run_id(f"run_ids[{i}]", run_id)
            stage = await asyncio.to_thread(self._lifecycle_stage, run_id)
            if stage is None:
                raise InvalidParameterValue(
                    f"run_ids[{i}]",
                    run_id,
                    "no run with this id exists; create it with CreateRun before logging to it",
                )
            if stage != "active":
                raise InvalidParameterValue(
                    f"run_ids[{i}]", run_id, f"the run is {stage}; metrics cannot be logged to it"
                )
            self._active_runs.add(run_id)

    def _check_key_budget(
        self, run_ids: Sequence[str], keys: Sequence[str], table: pa.Table
    ) -> None:
        """At most MAX_METRIC_KEYS_PER_RUN distinct metric keys per run (bounded memory for
        the latest summary and the UI); a batch that would exceed it is rejected whole."""
        if len(run_ids) == 1:
            pairs: Iterable[tuple[str, str]] = ((run_ids[0], key) for key in keys)
        else:
            run_col = table.column("run_id").combine_chunks()
            key_col = table.column("key").combine_chunks()
            if not pa.types.is_dictionary(run_col.type):
                run_col = run_col.dictionary_encode()
            if not pa.types.is_dictionary(key_col.type):
                key_col = key_col.dictionary_encode()
            codes = (
                pa.table([run_col.indices, key_col.indices], names=["r", "k"])
                .group_by(["r", "k"])
                .aggregate([])
            )
            run_names = run_col.dictionary.to_pylist()
            key_names = key_col.dictionary.to_pylist()
            pairs = (
                (run_names[r], key_names[k])
                for r, k in zip(codes["r"].to_pylist(), codes["k"].to_pylist(), strict=True)
            )
        self._check_key_pairs(pairs)

    def _check_key_pairs(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Check every pair first, then count the new keys: a rejected batch uses none of
        the budget."""
        added: dict[str, set[str]] = {}
        for run_id, key in pairs:
            known = self._run_keys.get(run_id)
            if known is None:
                latest = self._latest()
                mine = latest.filter(pc.equal(latest["run_id"], run_id))
                known = self._run_keys[run_id] = set(mine["key"].to_pylist())
            if key not in known:
                new = added.setdefault(run_id, set())
                if key not in new and len(known) + len(new) >= MAX_METRIC_KEYS_PER_RUN:
                    raise InvalidParameterValue(
                        "keys",
                        key,
                        f"run {run_id} already has {MAX_METRIC_KEYS_PER_RUN} metric keys, "
                        "the most one run may have",
                    )
                new.add(key)
        for run_id, new in added.items():
            self._run_keys[run_id] |= new

    def _lifecycle_stage(self, run_id: str) -> str | None:
        if not self._runs.run_exists(run_id):
            return None
        try:
            return self._runs.get_run(run_id).lifecycle_stage
        except ResourceDoesNotExist:
            return None

    # points given as columns (the REST door) ----------------------------------------------

    @staticmethod
    def points_table(
        run_ids: Sequence[str],
        keys: Sequence[str],
        steps: Sequence[int],
        timestamps: Sequence[int],
        values: Sequence[float],
    ) -> pa.Table:
        """The METRICS_SCHEMA table of parallel columns; InvalidParameterValue names the first
        bad point (a non-string name, a step or timestamp outside int64, a negative timestamp,
        a value that is not a number)."""
        count = len(run_ids)
        if not count == len(keys) == len(steps) == len(timestamps) == len(values):
            raise InvalidParameterValue(
                "points",
                [len(run_ids), len(keys), len(steps), len(timestamps), len(values)],
                "run_ids, keys, steps, timestamps and values must have the same length",
            )
        for field, column in (("run_ids", run_ids), ("keys", keys)):
            for i, item in enumerate(column):
                if not isinstance(item, str):
                    raise InvalidParameterValue(f"{field}[{i}]", item, "must be a string")
        for i, step in enumerate(steps):
            if isinstance(step, bool) or not isinstance(step, int) or not -(2**63) <= step < 2**63:
                raise InvalidParameterValue(
                    f"steps[{i}]", step, "step must be a 64-bit signed integer"
                )
        for i, timestamp in enumerate(timestamps):
            check_timestamp(f"timestamps[{i}]", timestamp)
        for i, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidParameterValue(
                    f"values[{i}]", value, "metric value must be a number (64-bit float)"
                )
        return pa.Table.from_arrays(
            [
                pa.array(run_ids, pa.string()),
                pa.array(keys, pa.string()),
                pa.array(steps, pa.int64()),
                pa.array(timestamps, pa.int64()),
                pa.array([float(v) for v in values], pa.float64()),
            ],
            schema=METRICS_SCHEMA,
        )
