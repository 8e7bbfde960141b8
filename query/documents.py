"""Documents of steppe's JSON API (query/API.md): experiments, runs with their latest
metrics, series, and Arrow IPC streams. Built in the query executor, never on the loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from steppe.ingest.catalog import ExperimentRecord, RunRecord
from steppe.ingest.layout import Snapshot
from steppe.query.jsonenc import dumps, float_list, float_value
from steppe.query.reader import MetricSummary, Reader
from steppe.query.series import (
    SeriesData,
)

if TYPE_CHECKING:
    pass

ARROW_STREAM = "application/vnd.apache.arrow.stream"


def experiment_json(experiment: ExperimentRecord, runs: Sequence[RunRecord]) -> dict[str, object]:
    activity = [max(run.start_time, run.end_time or 0) for run in runs]
    return {
        "experiment_id": experiment.experiment_id,
        "name": experiment.name,
        "artifact_location": experiment.artifact_location,
        "lifecycle_stage": experiment.lifecycle_stage,
        "creation_time": experiment.creation_time,
        "last_update_time": experiment.last_update_time,
        "tags": dict(experiment.tags),
        "run_count": len(runs),
        "last_activity": max(activity, default=None),
    }


def metric_json(summary: MetricSummary) -> dict[str, object]:
    # min/max are None when every value is NaN: their NaN-ignoring min/max is then NaN.
    return {
        "value": float_value(summary["value"]),
        "step": summary["step"],
        "timestamp": summary["timestamp"],
        "min": float_value(summary["min"] if summary["min"] is not None else math.nan),
        "max": float_value(summary["max"] if summary["max"] is not None else math.nan),
        "count": summary["count"],
    }


def run_json(run: RunRecord, metrics: Mapping[str, MetricSummary]) -> dict[str, object]:
    return {
        "info": {
            "run_id": run.run_id,
            "run_name": run.run_name,
            "experiment_id": run.experiment_id,
            "status": run.status,
            "start_time": run.start_time,
            "end_time": run.end_time,
            "lifecycle_stage": run.lifecycle_stage,
            "artifact_uri": run.artifact_uri,
            "user_id": run.user_id,
        },
        "data": {
            "params": dict(run.params),
            "tags": dict(run.tags),
            "metrics": {key: metric_json(summary) for key, summary in metrics.items()},
        },
    }


def runs_json(reader: Reader, snapshot: Snapshot, runs: Sequence[RunRecord]) -> list[object]:
    metrics = reader.latest_metrics(snapshot, [run.run_id for run in runs])
    return [run_json(run, metrics.get(run.run_id, {})) for run in runs]


def runs_document(reader: Reader, snapshot: Snapshot, runs: Sequence[RunRecord]) -> bytes:
    return dumps({"runs": runs_json(reader, snapshot, runs)})


def series_json(data: SeriesData) -> dict[str, object]:
    table = data.table
    out: dict[str, object] = {
        "run_id": None if data.series is None else data.series.run_id,
        "key": None if data.series is None else data.series.key,
        "bucketed": data.bucketed,
        "x": table.column("x").to_pylist(),
    }
    names = ("min", "max", "first", "last", "mean") if data.bucketed else ("value",)
    for name in names:
        out[name] = float_list(table.column(name))
    if "count" in table.column_names:
        out["count"] = table.column("count").to_pylist()
    return out


def arrow_buffer(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def arrow_stream(table: pa.Table) -> bytes:
    body: bytes = arrow_buffer(table).to_pybytes()
    return body
