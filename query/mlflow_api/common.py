"""What the MLflow REST handlers share: request fields and their checks, the JSON documents
of experiments and runs, MLflow's limits, ``ApiError``, and the app's writer and services.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, Protocol, TypeVar

from aiohttp import web

from steppe.errors import (
    ERROR_CODES,
    InvalidParameterValue,
    SteppeError,
    http_status,
)
from steppe.ingest.catalog import (
    Catalog,
    DatasetInputRecord,
    ExperimentRecord,
    RunRecord,
)
from steppe.ingest.layout import Snapshot
from steppe.ingest.metrics import check_timestamp
from steppe.ingest.tracking import ExperimentService, RunService, run_params, run_tags
from steppe.query import paging
from steppe.query.context import CATALOG
from steppe.query.jsonenc import dumps, float_value, parse_body
from steppe.query.reader import MetricSummary, Reader
from steppe.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
    check_experiment_id,
    check_name,
    check_run_id,
)

P = ParamSpec("P")
T = TypeVar("T")

#: Both doors MLflow's server opens: the client's and its web UI's.
MLFLOW_PREFIXES = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")
_SERVER_INFO_PATHS = ("/api/3.0/mlflow/server-info", "/ajax-api/3.0/mlflow/server-info")

#: MLflow's error codes and the HTTP status its server answers with (steppe.errors' table).
HTTP_STATUS: dict[str, int] = {code: status.http for code, status in ERROR_CODES.items()}

_page_token = paging.page_token
_page_offset = paging.page_offset

#: MLflow's limits beyond the naming ones (mlflow.utils.validation, mlflow.server.handlers).
MAX_BATCH_REQUEST_BYTES = 1_000_000
MAX_ENTITIES_PER_BATCH = 1000
MAX_SEARCH_RESULTS = 50_000
DEFAULT_SEARCH_RESULTS = 1000
#: get-history pages: MLflow's client asks for 25000 at a time. steppe answers a request without
#: max_results, or with a larger one, one bounded page at a time, with a next_page_token.
HISTORY_PAGE = 25_000
MAX_HISTORY_PAGE = 100_000
MAX_BULK_RUNS = 100
MAX_BULK_RESULTS_PER_RUN = 2500
MAX_DATASET_NAME = 500
MAX_DATASET_DIGEST = 36
MAX_DATASET_SOURCE = 65_535
MAX_DATASET_SCHEMA = 1_048_575
MAX_DATASET_PROFILE = 16_777_215
MAX_INPUT_TAG_KEY = 255
MAX_INPUT_TAG_VALUE = 500
_MAX_BODY_BYTES = 16 << 20

_RUN_STATUS_NUMBERS = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}
_VIEW_TYPE_NUMBERS = {1: "ACTIVE_ONLY", 2: "DELETED_ONLY", 3: "ALL"}
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_INT_RE = re.compile(r"-?[0-9]+")
_FLOAT_RE = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


class ApiError(SteppeError):
    """An MLflow error with a code other than steppe.errors' own; its HTTP status comes
    from steppe.errors.ERROR_CODES."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.http_status = http_status(error_code)


class MetricWriter(Protocol):
    """What the HTTP side may ask of ingest (``steppe.ingest.service.Ingestor`` is one)."""

    async def log_points(
        self,
        run_ids: Sequence[str],
        keys: Sequence[str],
        steps: Sequence[int],
        timestamps: Sequence[int],
        values: Sequence[float],
    ) -> None:
        """Durable (fsynced in the WAL) and visible to queries when it returns; validated
        whole or rejected whole (InvalidParameterValue)."""
        ...

    def forget_runs(self, run_ids: Iterable[str]) -> None:
        """These runs were deleted: check them again before accepting points for them."""
        ...


METRIC_WRITER = web.AppKey[MetricWriter | None]("mlflow_metric_writer")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- requests -----------------------------------------------------------------------------


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class _Fields:
    """One request's fields: a POST body's JSON object, or a GET's query parameters (every
    value a list of strings). Accepts proto JSON's snake_case and lowerCamel names; unknown
    fields are ignored, as MLflow's server does."""

    def __init__(self, values: Mapping[str, Any], *, query: bool) -> None:
        self._values = values
        self._query = query

    def raw(self, name: str) -> Any:
        camel = _camel(name)
        if camel != name and name in self._values and camel in self._values:
            raise InvalidParameterValue(name, None, f"give either '{name}' or '{camel}', not both")
        value = self._values.get(name, self._values.get(camel))
        if self._query and isinstance(value, list):
            return value[0] if value else None
        return value

    def string(self, name: str, *, required: bool = False) -> str:
        value = self.raw(name)
        if value is None or value == "":
            if required:
                raise InvalidParameterValue(name, value, "is a required parameter")
            return ""
        if not isinstance(value, str):
            raise InvalidParameterValue(name, value, "must be a string")
        return value

    def int64(self, name: str, *, required: bool = False) -> int | None:
        value = self.raw(name)
        if value is None or value == "":
            if required:
                raise InvalidParameterValue(name, value, "is a required parameter")
            return None
        return _int64(name, value)

    def bounded(self, name: str, default: int, low: int, high: int) -> int:
        value = self.int64(name)
        if value is None:
            return default
        if not low <= value <= high:
            raise InvalidParameterValue(name, value, f"must be an integer from {low} to {high}")
        return value

    def strings(self, name: str) -> list[str]:
        value = self._values.get(name, self._values.get(_camel(name)))
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidParameterValue(name, value, "must be a list of strings")
        return value

    def objects(self, name: str) -> list[dict[str, Any]]:
        value = self.raw(name)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise InvalidParameterValue(name, value, "must be a list of objects")
        return value

    def enum(self, name: str, numbers: Mapping[int, str], default: str) -> str:
        value = self.raw(name)
        if value is None or value == "":
            return default
        if isinstance(value, str) and _INT_RE.fullmatch(value):
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value in numbers:
            return numbers[value]
        if isinstance(value, str) and value in numbers.values():
            return value
        raise InvalidParameterValue(name, value, f"must be one of {', '.join(numbers.values())}")


def _int64(field: str, value: object) -> int:
    if (isinstance(value, str) and _INT_RE.fullmatch(value.strip())) or (
        isinstance(value, float) and value.is_integer()
    ):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
        raise InvalidParameterValue(field, value, "must be a 64-bit integer")
    return value


def _double(field: str, value: object) -> float:
    """A proto JSON double: a number, "NaN", "Infinity", "-Infinity" or a numeric string."""
    if isinstance(value, str):
        if value in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[value]
        if _FLOAT_RE.fullmatch(value.strip()):
            return float(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise InvalidParameterValue(
        field, value, 'must be a number (a double; "NaN", "Infinity", "-Infinity" allowed)'
    )


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes with an MLflow error (not a 413,
    which MLflow's client would retry)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 << 10):
        size += len(chunk)
        if size > limit:
            raise InvalidParameterValue(
                "body", f"<more than {limit} bytes>", f"requests must be at most {limit} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _fields(request: web.Request, limit: int = _MAX_BODY_BYTES) -> _Fields:
    if request.method == "GET":
        query = request.query
        return _Fields({name: query.getall(name) for name in query}, query=True)
    body = await _read_body(request, limit)
    document = parse_body(body, double_encoded=True)
    if not isinstance(document, dict):
        raise InvalidParameterValue("body", document, "must be a JSON object")
    return _Fields(document, query=False)


def _run_id(fields: _Fields) -> str:
    run_id = fields.string("run_id") or fields.string("run_uuid")
    if not run_id:
        raise InvalidParameterValue("run_id", None, "is a required parameter")
    return check_run_id("run_id", run_id)


def _experiment_id(fields: _Fields, name: str = "experiment_id") -> str:
    return check_experiment_id(name, fields.string(name, required=True))


def _key(field: str, key: object, what: str) -> str:
    if key is None or key == "":
        raise InvalidParameterValue(field, key, "is a required parameter")
    return check_name(field, key, what)


def _text(field: str, value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidParameterValue(field, value, "must be a string")
    return value


def _pairs(items: Sequence[Mapping[str, Any]], field: str) -> list[tuple[object, str]]:
    """JSON key/value objects as the pairs the domain services check (values are strings)."""
    return [
        (item.get("key"), _text(f"{field}[{i}].value", item.get("value")))
        for i, item in enumerate(items)
    ]


@dataclass(frozen=True)
class _Point:
    key: str
    value: float
    timestamp: int
    step: int


def _metric(item: Mapping[str, Any], path: str) -> _Point:
    """One metric of log-metric or log-batch, checked as MLflow's _validate_metric does."""
    key = _key(f"{path}key", item.get("key"), "metric key")
    raw_value = item.get("value")
    if raw_value is None or raw_value == "":
        raise InvalidParameterValue(f"{path}value", raw_value, "is a required parameter")
    value = _double(f"{path}value", raw_value)
    raw_timestamp = item.get("timestamp")
    if raw_timestamp is None or raw_timestamp == "":
        raise InvalidParameterValue(f"{path}timestamp", raw_timestamp, "is a required parameter")
    timestamp = _int64(f"{path}timestamp", raw_timestamp)
    check_timestamp(f"{path}timestamp", timestamp)
    raw_step = item.get("step")
    step = 0 if raw_step is None or raw_step == "" else _int64(f"{path}step", raw_step)
    return _Point(key, value, timestamp, step)


def _batch_limit(what: str, count: int, limit: int) -> None:
    if count > limit:
        raise InvalidParameterValue(
            what,
            f"<{count} {what}>",
            f"a batch logging request can contain at most {limit} {what}; split up the "
            f"{what} across several requests",
        )


@dataclass(frozen=True)
class _LogBatch:
    run_id: str
    metrics: list[_Point]
    params: list[tuple[str, str]]
    tags: list[tuple[str, str]]


def _log_batch_request(fields: _Fields) -> _LogBatch:
    run_id = _run_id(fields)
    raw_metrics, raw_params, raw_tags = (
        fields.objects("metrics"),
        fields.objects("params"),
        fields.objects("tags"),
    )
    metrics = [_metric(item, f"metrics[{i}].") for i, item in enumerate(raw_metrics)]
    # Checked whole before anything is written (the services check again, cheaply).
    params = run_params(_pairs(raw_params, "params"), "params")
    tags = run_tags(_pairs(raw_tags, "tags"), "tags")
    _batch_limit("metrics", len(metrics), MAX_METRICS_PER_BATCH)
    _batch_limit("params", len(params), MAX_PARAMS_TAGS_PER_BATCH)
    _batch_limit("tags", len(tags), MAX_PARAMS_TAGS_PER_BATCH)
    _batch_limit(
        "metrics, params, and tags", len(metrics) + len(params) + len(tags), MAX_ENTITIES_PER_BATCH
    )
    keys = [key for key, _ in params]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise InvalidParameterValue(
            "params",
            duplicates,
            "duplicate param keys in one request; send one value per param key",
        )
    # MLflow stores a point logged twice in one request once (NaN never equals itself).
    unique = list(dict.fromkeys(p for p in metrics if not math.isnan(p.value)))
    unique += [p for p in metrics if math.isnan(p.value)]
    return _LogBatch(run_id, unique, params, tags)


def _dataset_inputs(items: Sequence[Mapping[str, Any]]) -> list[DatasetInputRecord]:
    out = []
    for i, item in enumerate(items):
        path = f"datasets[{i}]"
        dataset = item.get("dataset")
        if not isinstance(dataset, dict):
            raise InvalidParameterValue(f"{path}.dataset", dataset, "is a required object")

        def field(
            name: str,
            limit: int,
            *,
            required: bool,
            at: str = path,
            dataset: Mapping[str, Any] = dataset,
        ) -> str:
            value = _text(f"{at}.dataset.{name}", dataset.get(name))
            if required and not value:
                raise InvalidParameterValue(f"{at}.dataset.{name}", value, "is required")
            if len(value) > limit:
                raise InvalidParameterValue(
                    f"{at}.dataset.{name}", value, f"exceeds the maximum length of {limit}"
                )
            return value

        tags: dict[str, str] = {}
        raw_tags = item.get("tags") or []
        if not isinstance(raw_tags, list):
            raise InvalidParameterValue(f"{path}.tags", raw_tags, "must be a list of objects")
        for j, tag in enumerate(raw_tags):
            key = _text(f"{path}.tags[{j}].key", tag.get("key") if isinstance(tag, dict) else tag)
            value = _text(f"{path}.tags[{j}].value", tag.get("value"))
            if not key or len(key) > MAX_INPUT_TAG_KEY:
                raise InvalidParameterValue(
                    f"{path}.tags[{j}].key", key, f"must be 1 to {MAX_INPUT_TAG_KEY} characters"
                )
            if len(value) > MAX_INPUT_TAG_VALUE:
                raise InvalidParameterValue(
                    f"{path}.tags[{j}].value",
                    value,
                    f"exceeds the maximum length of {MAX_INPUT_TAG_VALUE}",
                )
            tags[key] = value
        out.append(
            DatasetInputRecord(
                name=field("name", MAX_DATASET_NAME, required=True),
                digest=field("digest", MAX_DATASET_DIGEST, required=True),
                source_type=field("source_type", MAX_DATASET_SOURCE, required=True),
                source=field("source", MAX_DATASET_SOURCE, required=True),
                schema=field("schema", MAX_DATASET_SCHEMA, required=False),
                profile=field("profile", MAX_DATASET_PROFILE, required=False),
                tags=tags,
            )
        )
    return out


# -- documents ----------------------------------------------------------------------------


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"key": key, "value": value} for key, value in tags.items()]


def _experiment_json(record: ExperimentRecord) -> dict[str, object]:
    return {
        "experiment_id": record.experiment_id,
        "name": record.name,
        "artifact_location": record.artifact_location,
        "lifecycle_stage": record.lifecycle_stage,
        "last_update_time": record.last_update_time,
        "creation_time": record.creation_time,
        "tags": _tag_list(record.tags),
    }


def _run_info_json(record: RunRecord) -> dict[str, object]:
    info: dict[str, object] = {
        "run_id": record.run_id,
        "run_uuid": record.run_id,
        "run_name": record.run_name,
        "experiment_id": record.experiment_id,
        "user_id": record.user_id,
        "status": record.status,
        "start_time": record.start_time,
        "artifact_uri": record.artifact_uri,
        "lifecycle_stage": record.lifecycle_stage,
    }
    if record.end_time is not None:
        info["end_time"] = record.end_time
    return info


def _dataset_input_json(item: DatasetInputRecord) -> dict[str, object]:
    dataset: dict[str, object] = {
        "name": item.name,
        "digest": item.digest,
        "source_type": item.source_type,
        "source": item.source,
    }
    if item.schema:
        dataset["schema"] = item.schema
    if item.profile:
        dataset["profile"] = item.profile
    return {"tags": _tag_list(item.tags), "dataset": dataset}


def _run_json(
    record: RunRecord,
    metrics: Mapping[str, MetricSummary],
    inputs: Sequence[DatasetInputRecord] = (),
) -> dict[str, object]:
    """MLflow's Run message: ``data.metrics`` holds each key's latest point (highest step,
    then newest timestamp); non-finite values are "NaN", "Infinity", "-Infinity"."""
    return {
        "info": _run_info_json(record),
        "data": {
            "metrics": [
                {
                    "key": key,
                    "value": float_value(summary["value"]),
                    "timestamp": summary["timestamp"],
                    "step": summary["step"],
                }
                for key, summary in metrics.items()
            ],
            "params": _tag_list(record.params),
            "tags": _tag_list(record.tags),
        },
        "inputs": {"dataset_inputs": [_dataset_input_json(item) for item in inputs]},
    }


def _runs_json(
    reader: Reader, catalog: Catalog, snapshot: Snapshot, runs: Sequence[RunRecord]
) -> list[dict[str, object]]:
    run_ids = [run.run_id for run in runs]
    metrics = reader.latest_metrics(snapshot, run_ids)
    inputs = catalog.run_inputs(run_ids)
    from steppe.query.mlflow_models import run_outputs_json  # it uses this module's helpers

    outputs = run_outputs_json(catalog, run_ids)
    documents = [
        _run_json(run, metrics.get(run.run_id, {}), inputs.get(run.run_id, ())) for run in runs
    ]
    for document, run in zip(documents, runs, strict=True):
        if run.run_id in outputs:
            document["outputs"] = outputs[run.run_id]
    return documents


def _json(document: object) -> web.Response:
    return web.Response(body=dumps(document), content_type="application/json")


_EMPTY = b"{}"


def _ok() -> web.Response:
    return web.Response(body=_EMPTY, content_type="application/json")


# -- running ------------------------------------------------------------------------------


async def _blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    # Catalog writes commit with an fsync and reads hold SQLite's lock: never on the loop.
    return await asyncio.to_thread(fn, *args, **kwargs)


def _writer(request: web.Request) -> MetricWriter:
    writer = request.app[METRIC_WRITER]
    if writer is None:
        raise ApiError(
            "NOT_IMPLEMENTED", "this steppe HTTP app is read-only (it was started without ingest)"
        )
    return writer


def _catalog(request: web.Request) -> Catalog:
    return request.app[CATALOG]


def _experiments(request: web.Request) -> ExperimentService:
    return ExperimentService(request.app[CATALOG])


def _runs(request: web.Request) -> RunService:
    return RunService(request.app[CATALOG])
