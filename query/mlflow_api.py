"""MLflow's tracking REST API (2.0, as the mlflow 3.x client uses it) over steppe's data model.

Routes under ``/api/2.0/mlflow/`` and ``/ajax-api/2.0/mlflow/``, a validator per request, JSON
<-> domain converters and one error-code -> HTTP status table. Metric points go through the
``MetricWriter`` (the ingest pipeline: validated, WAL, fsync) and never straight to files;
experiments, runs, params, tags and dataset inputs go to the Catalog. Without a writer the API
is read-only.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, Protocol, TypeVar

import pyarrow as pa
from aiohttp import web

from steppe.errors import (
    ERROR_CODES,
    InvalidParameterValue,
    ResourceDoesNotExist,
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
from steppe.ingest.tracking import ExperimentService, RunService, run_params, run_tags
from steppe.query import paging
from steppe.query.artifacts import clean_path
from steppe.query.context import CATALOG, CATALOG_TABLES, READER, SQL_TIME_LIMIT_S, with_snapshot
from steppe.query.jsonenc import dumps, float_value, parse_body
from steppe.query.reader import MetricSummary, Reader, points_sql
from steppe.query.search import (
    VIEW_TYPES,
    Comparison,
    OrderKey,
    RunSearch,
    parse_filter,
    parse_order_by,
)
from steppe.query.views import CatalogTables, matching_run_ids
from steppe.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
    check_experiment_id,
    check_name,
    check_run_id,
)

__all__ = [
    "HTTP_STATUS",
    "MLFLOW_PREFIXES",
    "ApiError",
    "MetricWriter",
    "add_mlflow_routes",
]

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
    if timestamp < 0:
        raise InvalidParameterValue(
            f"{path}timestamp",
            timestamp,
            f"metric '{key}': timestamp must be a non-negative 64-bit integer (ms)",
        )
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


# -- experiments --------------------------------------------------------------------------


async def _create_experiment(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    name = fields.string("name")
    location = fields.string("artifact_location")
    if location.startswith("mlflow-artifacts:"):
        # Served by this server: the folder must stay inside its artifact store.
        clean_path(location.split(":", 1)[1].lstrip("/"), "artifact_location", allow_root=True)
    tags = _pairs(fields.objects("tags"), "tags")
    record = await _blocking(_experiments(request).create, name, location, tags)
    return _json({"experiment_id": record.experiment_id})


async def _get_experiment(request: web.Request) -> web.Response:
    fields = await _fields(request)
    record = await _blocking(_experiments(request).get, _experiment_id(fields))
    return _json({"experiment": _experiment_json(record)})


async def _get_experiment_by_name(request: web.Request) -> web.Response:
    fields = await _fields(request)
    name = fields.string("experiment_name", required=True)
    record = await _blocking(_catalog(request).get_experiment_by_name, name)
    if record is None:
        raise ResourceDoesNotExist(f"Could not find experiment with name '{name}'")
    return _json({"experiment": _experiment_json(record)})


async def _update_experiment(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    experiment_id = _experiment_id(fields)
    new_name = fields.string("new_name")
    await _blocking(_experiments(request).rename, experiment_id, new_name)
    return _ok()


async def _delete_experiment(request: web.Request) -> web.Response:
    writer = _writer(request)
    fields = await _fields(request)
    deleted = await _blocking(_experiments(request).delete, _experiment_id(fields))
    writer.forget_runs(deleted)
    return _ok()


async def _restore_experiment(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    await _blocking(_experiments(request).restore, _experiment_id(fields))
    return _ok()


async def _set_experiment_tag(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    experiment_id = _experiment_id(fields)
    value = _text("value", fields.raw("value"))
    await _blocking(_experiments(request).set_tag, experiment_id, fields.raw("key"), value)
    return _ok()


async def _delete_experiment_tag(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    experiment_id = _experiment_id(fields)
    key = fields.string("key", required=True)
    await _blocking(_experiments(request).delete_tag, experiment_id, key)
    return _ok()


async def _search_experiments(request: web.Request) -> web.Response:
    fields = await _fields(request)
    view = fields.enum("view_type", _VIEW_TYPE_NUMBERS, "ACTIVE_ONLY")
    max_results = fields.bounded("max_results", DEFAULT_SEARCH_RESULTS, 1, MAX_SEARCH_RESULTS)
    query = _ExperimentQuery.parse(fields.string("filter"), fields.strings("order_by"))
    offset = _page_offset(fields.string("page_token"))
    stages = VIEW_TYPES[view]
    experiments = await _blocking(_catalog(request).list_experiments)
    found = query.run([e for e in experiments if stages is None or e.lifecycle_stage in stages])
    out: dict[str, object] = {
        "experiments": [_experiment_json(e) for e in found[offset : offset + max_results]]
    }
    if len(found) > offset + max_results:
        out["next_page_token"] = _page_token(offset + max_results)
    return _json(out)


@dataclass(frozen=True)
class _ExperimentTerm:
    kind: str  # "attribute" | "tag"
    key: str
    op: str
    value: str | int | None


_EXPERIMENT_STRING_ATTRIBUTES = ("name",)
_EXPERIMENT_NUMERIC_ATTRIBUTES = ("creation_time", "last_update_time")
_EXPERIMENT_ORDER_KEYS = ("name", "experiment_id", "creation_time", "last_update_time")
_EXPERIMENT_TERM_RE = re.compile(
    r"""\s*(?:(?P<prefix>attributes?|attr|tags?)\.)?
        (?P<key>`[^`]+`|"[^"]+"|[A-Za-z0-9_.\-/: ]+?|[A-Za-z_][A-Za-z0-9_]*)
        \s*(?P<op>!=|<=|>=|=|<|>|\bLIKE\b|\bILIKE\b|\bIS\s+NOT\s+NULL\b|\bIS\s+NULL\b)\s*
        (?P<value>'(?:[^']|'')*'|"(?:[^"]|"")*"|-?[0-9]+(?:\.[0-9]+)?)?\s*""",
    re.IGNORECASE | re.VERBOSE,
)


def _split_outside_quotes(text: str) -> list[str]:
    """The comparisons of a filter: split on AND outside quotes; OR is refused (MLflow)."""
    clauses, start, quote, i = [], 0, "", 0
    while i < len(text):
        char = text[i]
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"`":
            quote = char
        else:
            word = re.match(r"\s(AND|OR)\s", text[i:], re.IGNORECASE)
            if word is not None:
                if word.group(1).upper() == "OR":
                    raise InvalidParameterValue(
                        "filter", text, "OR is not supported (as in MLflow): join with AND"
                    )
                clauses.append(text[start:i])
                i += word.end() - 1
                start = i + 1
        i += 1
    clauses.append(text[start:])
    return [clause for clause in clauses if clause.strip()] if text.strip() else []


def _like(pattern: str, text: str, *, ignore_case: bool) -> bool:
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL | (re.IGNORECASE if ignore_case else 0)) is not None


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if op == "=":
        return bool(actual == expected)
    if op == "!=":
        return bool(actual != expected)
    if op == "LIKE":
        return _like(expected, actual, ignore_case=False)
    if op == "ILIKE":
        return _like(expected, actual, ignore_case=True)
    if op == "<":
        return bool(actual < expected)
    if op == "<=":
        return bool(actual <= expected)
    if op == ">":
        return bool(actual > expected)
    return bool(actual >= expected)


@dataclass(frozen=True)
class _ExperimentQuery:
    """MLflow's search_experiments filter (comparisons on name, creation_time,
    last_update_time and tags.<key>, joined by AND) and order_by."""

    terms: tuple[_ExperimentTerm, ...]
    order: tuple[tuple[str, bool], ...]

    @classmethod
    def parse(cls, text: str, order_by: Sequence[str]) -> _ExperimentQuery:
        terms: list[_ExperimentTerm] = []
        for clause in _split_outside_quotes(text):
            terms.append(cls._term(text, clause))
        order: list[tuple[str, bool]] = []
        for index, clause in enumerate(order_by):
            match = re.fullmatch(
                r"\s*(?:attributes?\.|attr\.)?(\w+)(?:\s+(ASC|DESC))?\s*", clause, re.IGNORECASE
            )
            if match is None or match.group(1) not in _EXPERIMENT_ORDER_KEYS:
                raise InvalidParameterValue(
                    f"order_by[{index}]",
                    clause,
                    f"order by one of {', '.join(_EXPERIMENT_ORDER_KEYS)}, then ASC or DESC",
                )
            order.append((match.group(1), (match.group(2) or "ASC").upper() == "ASC"))
        if not order:
            order = [("creation_time", False), ("experiment_id", True)]
        if not any(key == "experiment_id" for key, _ in order):
            order.append(("experiment_id", False))
        return cls(tuple(terms), tuple(order))

    @staticmethod
    def _term(text: str, clause: str) -> _ExperimentTerm:
        match = _EXPERIMENT_TERM_RE.fullmatch(clause)
        if match is None:
            raise InvalidParameterValue(
                "filter",
                text,
                f"cannot parse {clause.strip()!r}: expected e.g. name = 'x', "
                "tags.team LIKE 'ml%' or creation_time > 1700000000000",
            )
        prefix = (match.group("prefix") or "attribute").lower()
        kind = "tag" if prefix.startswith("tag") else "attribute"
        key = match.group("key").strip()
        if key[:1] in '`"':
            key = key[1:-1]
        op = re.sub(r"\s+", " ", match.group("op").upper())
        raw = match.group("value")
        if op.startswith("IS"):
            if kind != "tag" or raw is not None:
                raise InvalidParameterValue("filter", text, f"{op} applies to tags only")
            return _ExperimentTerm(kind, key, op, None)
        if raw is None:
            raise InvalidParameterValue("filter", text, f"expected a value after {op}")
        if kind == "tag" or key in _EXPERIMENT_STRING_ATTRIBUTES:
            if raw[0] not in "'\"" or op not in ("=", "!=", "LIKE", "ILIKE"):
                raise InvalidParameterValue(
                    "filter", text, f"{key} compares with a quoted string using =, !=, LIKE, ILIKE"
                )
            return _ExperimentTerm(kind, key, op, raw[1:-1].replace(raw[0] * 2, raw[0]))
        if key in _EXPERIMENT_NUMERIC_ATTRIBUTES:
            if not _INT_RE.fullmatch(raw) or op in ("LIKE", "ILIKE"):
                raise InvalidParameterValue(
                    "filter", text, f"{key} compares with an integer (ms) using = != < <= > >="
                )
            return _ExperimentTerm(kind, key, op, int(raw))
        if key == "experiment_id":
            if op not in ("=", "!="):
                raise InvalidParameterValue("filter", text, "experiment_id supports = and != only")
            return _ExperimentTerm(kind, key, op, raw.strip("'\""))
        raise InvalidParameterValue(
            "filter",
            text,
            f"unknown attribute {key!r}: use name, creation_time, last_update_time or tags.<key>",
        )

    def matches(self, experiment: ExperimentRecord) -> bool:
        for term in self.terms:
            if term.kind == "tag":
                present = term.key in experiment.tags
                if term.op in ("IS NULL", "IS NOT NULL"):
                    if present != (term.op == "IS NOT NULL"):
                        return False
                    continue
                if not present or not _compare(experiment.tags[term.key], term.op, term.value):
                    return False
            elif not _compare(getattr(experiment, term.key), term.op, term.value):
                return False
        return True

    def run(self, experiments: Sequence[ExperimentRecord]) -> list[ExperimentRecord]:
        found = [e for e in experiments if self.matches(e)]
        for key, ascending in reversed(self.order):  # stable sorts, last key first

            def sort_key(e: ExperimentRecord, key: str = key) -> Any:
                value = getattr(e, key)
                if key == "experiment_id":
                    return (0, int(value), "") if value.isdigit() else (1, 0, value)
                return value

            found.sort(key=sort_key, reverse=not ascending)
        return found


# -- runs ---------------------------------------------------------------------------------


async def _create_run(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    start_time = fields.int64("start_time")
    if start_time is not None and start_time < 0:
        raise InvalidParameterValue("start_time", start_time, "must be non-negative (ms)")
    services = _runs(request)
    record = await _blocking(
        lambda: services.create(
            experiment_id=fields.string("experiment_id"),
            run_name=fields.string("run_name"),
            start_time=start_time,
            tags=_pairs(fields.objects("tags"), "tags"),
            user_id=fields.string("user_id"),
        )
    )
    return _json({"run": _run_json(record, {})})


async def _get_run(request: web.Request) -> web.Response:
    def document(snapshot: Snapshot, catalog: Catalog, reader: Reader, run_id: str) -> bytes:
        run = catalog.get_run(run_id)
        return dumps({"run": _runs_json(reader, catalog, snapshot, [run])[0]})

    fields = await _fields(request)
    app = request.app
    body = await with_snapshot(request, document, app[CATALOG], app[READER], _run_id(fields))
    return web.Response(body=body, content_type="application/json")


async def _update_run(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    run_id = _run_id(fields)
    status = fields.enum("status", _RUN_STATUS_NUMBERS, "") or None
    end_time = fields.int64("end_time")
    if end_time is not None and end_time < 0:
        raise InvalidParameterValue("end_time", end_time, "must be non-negative (ms)")
    run_name = fields.string("run_name") or None
    runs = _runs(request)
    record = await _blocking(
        lambda: runs.update(run_id, status=status, end_time=end_time, run_name=run_name)
    )
    return _json({"run_info": _run_info_json(record)})


async def _delete_run(request: web.Request) -> web.Response:
    writer = _writer(request)
    fields = await _fields(request)
    run_id = _run_id(fields)
    await _blocking(_runs(request).delete, run_id)
    writer.forget_runs([run_id])
    return _ok()


async def _restore_run(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    await _blocking(_runs(request).restore, _run_id(fields))
    return _ok()


async def _log_points(request: web.Request, run_id: str, points: Sequence[_Point]) -> None:
    if not points:
        return
    await _writer(request).log_points(
        [run_id] * len(points),
        [p.key for p in points],
        [p.step for p in points],
        [p.timestamp for p in points],
        [p.value for p in points],
    )


async def _log_metric(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    run_id = _run_id(fields)
    point = _metric({name: fields.raw(name) for name in ("key", "value", "timestamp", "step")}, "")
    from steppe.query import mlflow_models  # LoggedModel metrics (model_id); imports us

    linked = {name: fields.raw(name) for name in ("model_id", "dataset_name", "dataset_digest")}
    model_metrics = mlflow_models.model_metrics_of(run_id, [linked], [point])
    await _blocking(_runs(request).active, run_id)
    await mlflow_models.check_model_metrics(request, model_metrics)
    await _log_points(request, run_id, [point])
    await mlflow_models.save_model_metrics(request, model_metrics)
    return _ok()


async def _log_param(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    run_id = _run_id(fields)
    key = _key("key", fields.raw("key"), "param key")
    value = _text("value", fields.raw("value"))
    await _blocking(_runs(request).log_params, run_id, [(key, value)], "param")
    return _ok()


async def _set_tag(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    run_id = _run_id(fields)
    key = _key("key", fields.raw("key"), "tag key")
    value = _text("value", fields.raw("value"))
    await _blocking(_runs(request).set_tags, run_id, [(key, value)], "tag")
    return _ok()


async def _delete_tag(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    run_id = _run_id(fields)
    key = fields.string("key", required=True)
    await _blocking(_runs(request).delete_tag, run_id, key)
    return _ok()


async def _log_batch(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request, MAX_BATCH_REQUEST_BYTES)
    batch = _log_batch_request(fields)
    runs = _runs(request)
    from steppe.query import mlflow_models  # LoggedModel metrics (model_id); imports us

    raw = fields.objects("metrics")
    linked = raw if any(m.get("model_id") for m in raw) else []  # the points, before dedup
    model_metrics = mlflow_models.model_metrics_of(
        batch.run_id,
        linked,
        [_metric(m, f"metrics[{i}].") for i, m in enumerate(linked)],
        "metrics",
    )
    await mlflow_models.check_model_metrics(request, model_metrics)

    # MLflow's order: params (a changed value rejects the request), metrics, then tags.
    await _blocking(runs.log_params, batch.run_id, batch.params)
    await _log_points(request, batch.run_id, batch.metrics)
    await mlflow_models.save_model_metrics(request, model_metrics)
    if batch.tags:
        await _blocking(runs.set_tags, batch.run_id, batch.tags)
    return _ok()


async def _log_inputs(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    run_id = _run_id(fields)
    datasets = _dataset_inputs(fields.objects("datasets"))
    if fields.objects("models"):
        raise InvalidParameterValue(
            "models", fields.raw("models"), "steppe records no logged models; send datasets only"
        )
    catalog = _catalog(request)
    runs = _runs(request)

    def log() -> None:
        runs.active(run_id)
        if datasets:
            catalog.log_inputs(run_id, datasets)

    await _blocking(log)
    return _ok()


@dataclass(frozen=True)
class _SearchRuns:
    experiment_ids: tuple[str, ...]
    filters: tuple[Comparison, ...]
    order_by: tuple[OrderKey, ...]
    lifecycle_stages: tuple[str, ...] | None
    max_results: int
    offset: int


def _search_runs_request(fields: _Fields) -> _SearchRuns:
    experiment_ids = tuple(
        check_experiment_id(f"experiment_ids[{i}]", e)
        for i, e in enumerate(fields.strings("experiment_ids"))
    )
    max_results = fields.bounded("max_results", DEFAULT_SEARCH_RESULTS, 1, MAX_SEARCH_RESULTS)
    view = fields.enum("run_view_type", _VIEW_TYPE_NUMBERS, "ACTIVE_ONLY")
    try:
        filters = parse_filter(fields.string("filter") or None)
        order_by = parse_order_by(fields.strings("order_by"))
    except InvalidParameterValue as exc:
        field = "filter" if exc.field == "filter_string" else exc.field
        raise InvalidParameterValue(field, exc.value, exc.rule) from None
    return _SearchRuns(
        experiment_ids,
        filters,
        order_by,
        VIEW_TYPES[view],
        max_results,
        _page_offset(fields.string("page_token")),
    )


async def _search_runs(request: web.Request) -> web.Response:
    def document(
        snapshot: Snapshot,
        tables: CatalogTables,
        catalog: Catalog,
        reader: Reader,
        ask: _SearchRuns,
        time_limit_s: float,
    ) -> bytes:
        view = tables.current()
        search = RunSearch(
            experiment_ids=ask.experiment_ids,
            filters=ask.filters,
            order_by=ask.order_by,
            lifecycle_stages=ask.lifecycle_stages,
            limit=ask.max_results + 1,  # one more says whether another page exists
            offset=ask.offset,
        )
        run_ids = matching_run_ids(reader, snapshot, view, search, time_limit_s=time_limit_s)
        runs = [view.records[run_id] for run_id in run_ids[: ask.max_results]]
        out: dict[str, object] = {"runs": _runs_json(reader, catalog, snapshot, runs)}
        if len(run_ids) > ask.max_results:
            out["next_page_token"] = _page_token(ask.offset + ask.max_results)
        return dumps(out)

    ask = _search_runs_request(await _fields(request))
    app = request.app
    body = await with_snapshot(
        request,
        document,
        app[CATALOG_TABLES],
        app[CATALOG],
        app[READER],
        ask,
        app[SQL_TIME_LIMIT_S],
    )
    return web.Response(body=body, content_type="application/json")


# -- metrics ------------------------------------------------------------------------------


_HISTORY_SCHEMA = pa.schema(
    [("step", pa.int64()), ("timestamp", pa.int64()), ("value", pa.float64())]
)
# MLflow stores NaN as 0 (plus a flag): order values the way its SQL store does.
_VALUE_ORDER = "CASE WHEN isnan(value) THEN 0 ELSE value END, isnan(value)"


def _history_page(
    snapshot: Snapshot, reader: Reader, run_id: str, key: str, limit: int, offset: int
) -> pa.Table:
    points = points_sql(snapshot, "run_id = $run_id AND key = $key", 'step, "timestamp", value')
    # MLflow's order for a history: timestamp, then step, then value.
    sql = (
        f'SELECT step, "timestamp", value FROM ({points}) '
        f'ORDER BY "timestamp", step, {_VALUE_ORDER} LIMIT $limit OFFSET $offset'
    )
    return reader.query(
        snapshot, sql, {"run_id": run_id, "key": key, "limit": limit, "offset": offset}
    )


def _metric_rows(key: str, table: pa.Table, run_id: str | None = None) -> list[dict[str, object]]:
    steps = table.column("step").to_pylist()
    stamps = table.column("timestamp").to_pylist()
    values = table.column("value").to_pylist()
    rows: list[dict[str, object]] = []
    for step, stamp, value in zip(steps, stamps, values, strict=True):
        row: dict[str, object] = {
            "key": key,
            "value": float_value(value),
            "timestamp": stamp,
            "step": step,
        }
        if run_id is not None:
            row["run_id"] = run_id
        rows.append(row)
    return rows


async def _get_metric_history(request: web.Request) -> web.Response:
    def document(
        snapshot: Snapshot,
        catalog: Catalog,
        reader: Reader,
        run_id: str,
        key: str,
        limit: int,
        offset: int,
    ) -> bytes:
        catalog.get_run(run_id)  # 404 for an unknown run
        table = _history_page(snapshot, reader, run_id, key, limit + 1, offset)
        out: dict[str, object] = {"metrics": _metric_rows(key, table.slice(0, limit))}
        if table.num_rows > limit:
            out["next_page_token"] = _page_token(offset + limit)
        return dumps(out)

    fields = await _fields(request)
    run_id = _run_id(fields)
    key = fields.string("metric_key", required=True)
    limit = min(fields.bounded("max_results", HISTORY_PAGE, 1, 2**31 - 1), MAX_HISTORY_PAGE)
    offset = _page_offset(fields.string("page_token"))
    app = request.app
    body = await with_snapshot(
        request, document, app[CATALOG], app[READER], run_id, key, limit, offset
    )
    return web.Response(body=body, content_type="application/json")


def _sampled_history(
    snapshot: Snapshot,
    reader: Reader,
    run_ids: Sequence[str],
    key: str,
    max_results: int,
    steps: tuple[int, int] | None,
) -> dict[str, pa.Table]:
    """Per run, up to ``max_results`` points evenly sampled over its ordered history (step,
    timestamp, value): the first of each of ``max_results`` equal buckets, and always the last
    point (replacing the final sample when the page is full), as MLflow's SQL store does."""
    params: dict[str, object] = {"key": key, "n": max_results}
    marks = []
    for index, run_id in enumerate(run_ids):
        params[f"r{index}"] = run_id
        marks.append(f"$r{index}")
    where = f"key = $key AND run_id IN ({', '.join(marks)})"
    if steps is not None:
        where += " AND step BETWEEN $lo AND $hi"
        params["lo"], params["hi"] = steps
    points = points_sql(snapshot, where, 'run_id, step, "timestamp", value')
    order = f'step, "timestamp", {_VALUE_ORDER}'
    backwards = (
        'step DESC, "timestamp" DESC, CASE WHEN isnan(value) THEN 0 ELSE value END DESC, '
        "isnan(value) DESC"
    )
    sql = f"""
        WITH pts AS ({points}),
        bucketed AS (
            SELECT *, ntile($n) OVER (PARTITION BY run_id ORDER BY {order}) AS bucket,
                   row_number() OVER (PARTITION BY run_id ORDER BY {backwards}) AS from_end
            FROM pts
        ),
        ranked AS (
            SELECT *, row_number() OVER (PARTITION BY run_id, bucket ORDER BY {order}) AS rn
            FROM bucketed
        )
        SELECT run_id, step, "timestamp", value, rn = 1 AS sampled, from_end = 1 AS last
        FROM ranked WHERE rn = 1 OR from_end = 1
        ORDER BY run_id, {order}
    """
    table = reader.query(snapshot, sql, params)
    out: dict[str, pa.Table] = {}
    rows = table.to_pylist()
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_run.setdefault(row["run_id"], []).append(row)
    for run_id, run_rows in by_run.items():
        sampled = [r for r in run_rows if r["sampled"]]
        last = next(r for r in run_rows if r["last"])
        if not sampled or sampled[-1] is not last:
            if len(sampled) >= max_results:
                sampled[-1] = last
            else:
                sampled.append(last)
        out[run_id] = pa.Table.from_pylist(
            [
                {"step": r["step"], "timestamp": r["timestamp"], "value": r["value"]}
                for r in sampled
            ],
            schema=pa.schema(
                [("step", pa.int64()), ("timestamp", pa.int64()), ("value", pa.float64())]
            ),
        )
    return out


async def _get_metric_history_bulk_interval(request: web.Request) -> web.Response:
    def document(
        snapshot: Snapshot,
        catalog: Catalog,
        reader: Reader,
        run_ids: list[str],
        key: str,
        max_results: int,
        steps: tuple[int, int] | None,
    ) -> bytes:
        for run_id in run_ids:
            catalog.get_run(run_id)  # 404 for an unknown run
        sampled = _sampled_history(snapshot, reader, run_ids, key, max_results, steps)
        metrics: list[dict[str, object]] = []
        for run_id in dict.fromkeys(run_ids):
            if run_id in sampled:
                metrics.extend(_metric_rows(key, sampled[run_id], run_id))
        return dumps({"metrics": metrics})

    fields = await _fields(request)
    run_ids = fields.strings("run_ids")
    if not run_ids:
        raise InvalidParameterValue("run_ids", run_ids, "is a required parameter")
    if len(run_ids) > MAX_BULK_RUNS:
        raise InvalidParameterValue(
            "run_ids", f"<{len(run_ids)} run ids>", f"at most {MAX_BULK_RUNS} run_ids per request"
        )
    for i, run_id in enumerate(run_ids):
        check_run_id(f"run_ids[{i}]", run_id)
    key = fields.string("metric_key", required=True)
    max_results = fields.bounded(
        "max_results", MAX_BULK_RESULTS_PER_RUN, 1, MAX_BULK_RESULTS_PER_RUN
    )
    start, end = fields.int64("start_step"), fields.int64("end_step")
    if (start is None) != (end is None):
        raise InvalidParameterValue(
            "start_step", start, "give both start_step and end_step, or neither"
        )
    steps = None
    if start is not None and end is not None:
        if start > end:
            raise InvalidParameterValue(
                "end_step", end, f"must not be less than start_step ({start})"
            )
        steps = (start, end)
    app = request.app
    body = await with_snapshot(
        request, document, app[CATALOG], app[READER], run_ids, key, max_results, steps
    )
    return web.Response(body=body, content_type="application/json")


# -- the rest a plain mlflow session touches ----------------------------------------------


async def _server_info(request: web.Request) -> web.Response:
    return _json(
        {
            "store_type": "SqlStore",
            "workspaces_enabled": False,
            "trace_archival_enabled": False,
            "multipart_uploads_enabled": False,
            "multipart_downloads_enabled": False,
            "presigned_upload_run_id_supported": False,
            "presigned_upload_model_id_supported": False,
            "features_enabled": {"gateway": False},
        }
    )


# -- registration -------------------------------------------------------------------------

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ROUTES: tuple[tuple[str, str, _Handler], ...] = (
    ("POST", "/experiments/create", _create_experiment),
    ("GET", "/experiments/get", _get_experiment),
    ("GET", "/experiments/get-by-name", _get_experiment_by_name),
    ("POST", "/experiments/search", _search_experiments),
    ("GET", "/experiments/search", _search_experiments),
    ("POST", "/experiments/update", _update_experiment),
    ("POST", "/experiments/delete", _delete_experiment),
    ("POST", "/experiments/restore", _restore_experiment),
    ("POST", "/experiments/set-experiment-tag", _set_experiment_tag),
    ("POST", "/experiments/delete-experiment-tag", _delete_experiment_tag),
    ("POST", "/runs/create", _create_run),
    ("GET", "/runs/get", _get_run),
    ("POST", "/runs/update", _update_run),
    ("POST", "/runs/delete", _delete_run),
    ("POST", "/runs/restore", _restore_run),
    ("POST", "/runs/log-metric", _log_metric),
    ("POST", "/runs/log-parameter", _log_param),
    ("POST", "/runs/set-tag", _set_tag),
    ("POST", "/runs/delete-tag", _delete_tag),
    ("POST", "/runs/log-batch", _log_batch),
    ("POST", "/runs/log-inputs", _log_inputs),
    ("POST", "/runs/search", _search_runs),
    ("GET", "/metrics/get-history", _get_metric_history),
    ("GET", "/metrics/get-history-bulk-interval", _get_metric_history_bulk_interval),
)


def add_mlflow_routes(app: web.Application, metric_writer: MetricWriter | None) -> None:
    """Register MLflow's tracking REST API on ``app`` (made by steppe.query.app.make_app,
    whose catalog, snapshot source and reader it uses). Without ``metric_writer`` every
    write answers 501 NOT_IMPLEMENTED."""
    app[METRIC_WRITER] = metric_writer
    for prefix in MLFLOW_PREFIXES:
        for method, path, handler in _ROUTES:
            app.router.add_route(method, prefix + path, handler)
    for path in _SERVER_INFO_PATHS:
        app.router.add_get(path, _server_info)
    from steppe.query.mlflow_models import add_model_routes  # it uses this module's helpers

    add_model_routes(app)
