"""MLflow's LoggedModel (3.x) and Model Registry REST routes: thin JSON <-> domain converters
over steppe.ingest.models.ModelService. The rules live there, never here.

Registered next to the tracking routes by steppe.query.mlflow_api.add_mlflow_routes.
"""

from __future__ import annotations

import functools
import posixpath
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from steppe.errors import InvalidParameterValue
from steppe.ingest.catalog import Catalog
from steppe.ingest.models import LOGGED_MODEL_STATUSES, ModelService
from steppe.ingest.models_catalog import (
    LoggedModelRecord,
    ModelMetricRecord,
    ModelRepository,
    ModelVersionRecord,
    RegisteredModelRecord,
)
from steppe.ingest.sql_catalog import SqlCatalog
from steppe.query.artifacts import ARTIFACT_STORE, _file_json, _one, _send, clean_path
from steppe.query.context import CATALOG
from steppe.query.mlflow_api.common import (
    MLFLOW_PREFIXES,
    ApiError,
    _blocking,
    _Fields,
    _fields,
    _json,
    _ok,
    _page_offset,
    _page_token,
    _writer,
)
from steppe.query.mlflow_api.experiments import _compare, _split_outside_quotes

__all__ = [
    "add_model_routes",
    "check_model_metrics",
    "model_metrics_of",
    "model_repository",
    "run_outputs_json",
    "save_model_metrics",
]

_STATUS_NUMBERS = {i + 1: name for i, name in enumerate(LOGGED_MODEL_STATUSES)}
_TERM_RE = re.compile(
    r"""\s*(?:(?P<prefix>attributes?|attr|tags?|params?|metrics?)\.)?
    (?P<key>`[^`]+`|"[^"]+"|[\w.\-]+)\s*
    (?P<op>!=|<=|>=|=|<|>|(?:NOT\s+)?I?LIKE)\s*
    (?P<value>'(?:[^']|'')*'|"(?:[^"]|"")*"|-?[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)\s*""",
    re.IGNORECASE | re.VERBOSE,
)


def model_repository(catalog: Catalog) -> ModelRepository:
    if isinstance(catalog, SqlCatalog):
        return catalog.models
    raise ApiError("NOT_IMPLEMENTED", "this catalog keeps no models")


def _service(request: web.Request) -> ModelService:
    catalog = request.app[CATALOG]
    return ModelService(model_repository(catalog), catalog)


def run_outputs_json(catalog: Catalog, run_ids: Sequence[str]) -> dict[str, dict[str, object]]:
    """run_id -> MLflow's RunOutputs message (runs without outputs are absent)."""
    if not isinstance(catalog, SqlCatalog):
        return {}
    try:
        outputs = catalog.models.run_outputs(run_ids)
    except sqlite3.OperationalError:  # a read-only catalog file older than the models tables
        return {}
    return {
        run_id: {"model_outputs": [{"model_id": m, "step": step} for m, step in items]}
        for run_id, items in outputs.items()
    }


# -- metrics logged with a model_id (called by mlflow_api's log-metric and log-batch) -------


def model_metrics_of(
    run_id: str, items: Sequence[Mapping[str, Any]], points: Sequence[Any], path: str = ""
) -> list[ModelMetricRecord]:
    """The points of ``items`` (MLflow Metric messages) that name a ``model_id``."""
    out = []
    for index, (item, point) in enumerate(zip(items, points, strict=True)):
        model_id = item.get("model_id")
        if model_id is None or model_id == "":
            continue
        where = f"{path}[{index}]." if path else ""
        if not isinstance(model_id, str) or not re.fullmatch(r"[\w\-]{1,64}", model_id):
            raise InvalidParameterValue(f"{where}model_id", model_id, "is not a logged model id")
        out.append(
            ModelMetricRecord(
                model_id,
                point.key,
                point.value,
                point.timestamp,
                point.step,
                run_id,
                str(item.get("dataset_name") or ""),
                str(item.get("dataset_digest") or ""),
            )
        )
    return list(dict.fromkeys(out))  # a point sent twice in one request is kept once


async def check_model_metrics(request: web.Request, records: Sequence[ModelMetricRecord]) -> None:
    """404 before anything is logged when a point names an unknown model."""
    service = _service(request) if records else None
    for model_id in sorted({r.model_id for r in records}):
        assert service is not None
        await _blocking(service.get_logged_model, model_id)


async def save_model_metrics(request: web.Request, records: Sequence[ModelMetricRecord]) -> None:
    if records:
        await _blocking(_service(request).log_model_metrics, records)


# -- filters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Term:
    kind: str  # attribute | tag | param
    key: str
    op: str
    value: str | int | float


def _terms(text: str) -> list[_Term]:
    terms = []
    for clause in _split_outside_quotes(text):
        match = _TERM_RE.fullmatch(clause)
        if match is None:
            raise InvalidParameterValue(
                "filter", text, f"cannot parse {clause.strip()!r}: expected e.g. name = 'x'"
            )
        prefix = (match.group("prefix") or "attribute").lower()
        kind = (
            "tag"
            if prefix.startswith("tag")
            else "param"
            if prefix.startswith("param")
            else "metric"
            if prefix.startswith("metric")
            else ("attribute")
        )
        key = match.group("key")
        if key[:1] in '`"':
            key = key[1:-1]
        raw = match.group("value")
        value: str | int | float = (
            raw[1:-1].replace(raw[0] * 2, raw[0])
            if raw[0] in "'\""
            else int(raw)
            if raw.lstrip("-").isdigit()
            else float(raw)
        )
        terms.append(_Term(kind, key, re.sub(r"\s+", " ", match.group("op").upper()), value))
    return terms


def _matches(terms: Sequence[_Term], get: Callable[[_Term], Any], text: str) -> bool:
    for term in terms:
        actual = get(term)
        if actual is None:
            # mlflow 3's client sends tags.`mlflow.prompt.is_prompt` != 'true' with every
            # registered-model search; a model without the tag must match it.
            if term.op == "!=":
                continue
            return False
        if isinstance(actual, str) != isinstance(term.value, str):
            raise InvalidParameterValue(
                "filter", text, f"{term.key} compares with {type(actual).__name__} values"
            )
        if term.op.startswith("NOT "):
            if _compare(actual, term.op[4:], term.value):
                return False
        elif not _compare(actual, term.op, term.value):
            return False
    return True


def _page(items: Sequence[Any], fields: _Fields, default: int, high: int) -> tuple[list[Any], str]:
    limit = fields.bounded("max_results", default, 1, high)
    offset = _page_offset(fields.string("page_token"))
    page = list(items[offset : offset + limit])
    token = _page_token(offset + limit) if offset + limit < len(items) else ""
    return page, token


# -- documents ----------------------------------------------------------------------------


def _pairs(values: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in values.items()]


def _metric_json(metric: ModelMetricRecord) -> dict[str, object]:
    out: dict[str, object] = {
        "key": metric.key,
        "value": metric.value,
        "timestamp": metric.timestamp,
        "step": metric.step,
        "model_id": metric.model_id,
        "run_id": metric.run_id,
    }
    if metric.dataset_name:
        out["dataset_name"] = metric.dataset_name
    if metric.dataset_digest:
        out["dataset_digest"] = metric.dataset_digest
    return out


def _logged_model_json(
    record: LoggedModelRecord, metrics: Sequence[ModelMetricRecord] = ()
) -> dict[str, object]:
    info: dict[str, object] = {
        "model_id": record.model_id,
        "experiment_id": record.experiment_id,
        "name": record.name,
        "creation_timestamp_ms": record.creation_time,
        "last_updated_timestamp_ms": record.last_update_time,
        "artifact_uri": record.artifact_uri,
        "status": record.status,
        "tags": _pairs(record.tags),
    }
    for key, value in (
        ("model_type", record.model_type),
        ("source_run_id", record.source_run_id),
        ("status_message", record.status_message),
    ):
        if value:
            info[key] = value
    return {
        "info": info,
        "data": {"params": _pairs(record.params), "metrics": [_metric_json(m) for m in metrics]},
    }


def _logged_model_doc(service: ModelService, record: LoggedModelRecord) -> dict[str, object]:
    return _logged_model_json(
        record, service.model_metrics([record.model_id]).get(record.model_id, [])
    )


def _version_json(record: ModelVersionRecord) -> dict[str, object]:
    out: dict[str, object] = {
        "name": record.name,
        "version": str(record.version),
        "creation_timestamp": record.creation_time,
        "last_updated_timestamp": record.last_update_time,
        "current_stage": record.current_stage,
        "description": record.description,
        "source": record.source,
        "run_id": record.run_id,
        "status": record.status,
        "tags": _pairs(record.tags),
        "run_link": record.run_link,
        "aliases": list(record.aliases),
    }
    if record.model_id:
        out["model_id"] = record.model_id
    return out


def _registered_json(
    record: RegisteredModelRecord, latest: Sequence[ModelVersionRecord]
) -> dict[str, object]:
    out: dict[str, object] = {
        "name": record.name,
        "creation_timestamp": record.creation_time,
        "last_updated_timestamp": record.last_update_time,
        "description": record.description,
        "tags": _pairs(record.tags),
        "aliases": [{"alias": a, "version": str(v)} for a, v in record.aliases.items()],
    }
    if latest:
        out["latest_versions"] = [_version_json(v) for v in latest]
    return out


def _registered_doc(service: ModelService, record: RegisteredModelRecord) -> dict[str, object]:
    return _registered_json(record, service.latest_versions(record.name))


def _tags(fields: _Fields, name: str = "tags") -> dict[str, str]:
    out = {}
    for index, item in enumerate(fields.objects(name)):
        key, value = item.get("key"), item.get("value", "")
        if not isinstance(key, str) or not key:
            raise InvalidParameterValue(f"{name}[{index}].key", key, "must be a non-empty string")
        if not isinstance(value, str):
            raise InvalidParameterValue(f"{name}[{index}].value", value, "must be a string")
        out[key] = value
    return out


# -- LoggedModels -------------------------------------------------------------------------


async def _create_logged_model(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    service = _service(request)
    record = await _blocking(
        service.create_logged_model,
        fields.string("experiment_id", required=True),
        fields.string("name"),
        fields.string("model_type"),
        fields.string("source_run_id"),
        _tags(fields),
        _tags(fields, "params"),
    )
    return _json({"model": _logged_model_json(record)})


def _model_id(request: web.Request) -> str:
    model_id = request.match_info["model_id"]
    if not re.fullmatch(r"[\w\-]{1,64}", model_id):
        raise InvalidParameterValue("model_id", model_id, "is not a logged model id")
    return model_id


async def _get_logged_model(request: web.Request) -> web.Response:
    allow = request.query.get("allow_deleted", "").lower() == "true"
    record = await _blocking(
        _service(request).get_logged_model, _model_id(request), allow_deleted=allow
    )
    return _json({"model": await _blocking(_logged_model_doc, _service(request), record)})


async def _finalize_logged_model(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    status = fields.enum("status", _STATUS_NUMBERS, "")
    service = _service(request)
    record = await _blocking(service.finalize_logged_model, _model_id(request), status)
    return _json({"model": await _blocking(_logged_model_doc, service, record)})


async def _delete_logged_model(request: web.Request) -> web.Response:
    _writer(request)
    await _blocking(_service(request).delete_logged_model, _model_id(request))
    return _ok()


async def _set_logged_model_tags(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    await _blocking(_service(request).set_logged_model_tags, _model_id(request), _tags(fields))
    return _ok()


async def _delete_logged_model_tag(request: web.Request) -> web.Response:
    _writer(request)
    key = request.match_info["tag_key"]
    await _blocking(_service(request).delete_logged_model_tag, _model_id(request), key)
    return _ok()


async def _log_logged_model_params(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    params = _tags(fields, "params")
    await _blocking(_service(request).log_logged_model_params, _model_id(request), params)
    return _ok()


_PROXY_SCHEME = "mlflow-artifacts:"


async def _logged_model_root(request: web.Request) -> tuple[LoggedModelRecord, str]:
    """The model and its folder in the artifact store (only mlflow-artifacts: roots)."""
    record = await _blocking(_service(request).get_logged_model, _model_id(request))
    uri = record.artifact_uri
    if not uri.startswith(_PROXY_SCHEME):
        raise InvalidParameterValue(
            "model_id", record.model_id, f"its files live at {uri!r}, which steppe does not serve"
        )
    rest = uri[len(_PROXY_SCHEME) :]
    if rest.startswith("//"):  # mlflow-artifacts://host:port/path: the host is this server
        rest = "/" + rest[2:].partition("/")[2]
    return record, clean_path(rest.lstrip("/"), "artifact_uri")


async def _list_logged_model_artifacts(request: web.Request) -> web.Response:
    """MLflow's ListLoggedModelArtifacts: one folder of the model, paths model-relative."""
    record, root = await _logged_model_root(request)
    relative = clean_path(
        _one(request, "artifact_directory_path", required=False) or "",
        "artifact_directory_path",
        allow_root=True,
    )
    entries = await _blocking(request.app[ARTIFACT_STORE].list, posixpath.join(root, relative))
    files = [_file_json(posixpath.join(relative, e.name), e) for e in entries]
    return _json({"root_uri": record.artifact_uri, "files": files})


async def _get_logged_model_artifact(request: web.Request) -> web.StreamResponse:
    """One file of the model, streamed (MLflow's ajax-api route)."""
    _, root = await _logged_model_root(request)
    path = clean_path(
        _one(request, "artifact_file_path", required=False) or "", "artifact_file_path"
    )
    return await _send(request, posixpath.join(root, path), attachment=True)


_LM_ATTRIBUTES: dict[str, Callable[[LoggedModelRecord], str | int]] = {
    "model_id": lambda m: m.model_id,
    "name": lambda m: m.name,
    "status": lambda m: m.status.removeprefix("LOGGED_MODEL_"),
    "model_type": lambda m: m.model_type,
    "source_run_id": lambda m: m.source_run_id,
    "creation_timestamp": lambda m: m.creation_time,
    "creation_time": lambda m: m.creation_time,
    "last_updated_timestamp": lambda m: m.last_update_time,
}


def _latest_metrics(
    metrics: Sequence[ModelMetricRecord], datasets: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """key -> the value at the highest step (then newest), of the given datasets only."""
    wanted = [
        (str(d.get("dataset_name", "")), str(d.get("dataset_digest") or "")) for d in datasets
    ]
    latest: dict[str, ModelMetricRecord] = {}
    for m in metrics:
        if wanted and not any(
            m.dataset_name == name and (not digest or m.dataset_digest == digest)
            for name, digest in wanted
        ):
            continue
        old = latest.get(m.key)
        if old is None or (m.step, m.timestamp) >= (old.step, old.timestamp):
            latest[m.key] = m
    return {key: m.value for key, m in latest.items()}


async def _search_logged_models(request: web.Request) -> web.Response:
    fields = await _fields(request)
    experiment_ids = fields.strings("experiment_ids")
    text = fields.string("filter")
    terms = _terms(text)
    order = fields.objects("order_by")
    datasets = fields.objects("datasets")
    for index, dataset in enumerate(datasets):
        if not isinstance(dataset.get("dataset_name"), str) or not dataset["dataset_name"]:
            raise InvalidParameterValue(
                f"datasets[{index}].dataset_name", dataset.get("dataset_name"), "is required"
            )
    service = _service(request)

    def get(
        record: LoggedModelRecord, metrics: Mapping[str, float], term: _Term
    ) -> str | int | float | None:
        if term.kind == "tag":
            return record.tags.get(term.key)
        if term.kind == "param":
            return record.params.get(term.key)
        if term.kind == "metric":
            if isinstance(term.value, str):
                raise InvalidParameterValue("filter", text, f"metrics.{term.key} is a number")
            return metrics.get(term.key)
        if term.key not in _LM_ATTRIBUTES:
            raise InvalidParameterValue(
                "filter", text, f"unknown attribute {term.key!r}: use {', '.join(_LM_ATTRIBUTES)}"
            )
        return _LM_ATTRIBUTES[term.key](record)

    def search() -> tuple[list[LoggedModelRecord], dict[str, list[ModelMetricRecord]]]:
        candidates = service.search_logged_models(experiment_ids)
        points = service.model_metrics([m.model_id for m in candidates])
        latest = {
            m.model_id: _latest_metrics(points.get(m.model_id, []), datasets) for m in candidates
        }
        found = [
            m
            for m in candidates
            if _matches(terms, functools.partial(get, m, latest[m.model_id]), text)
        ]
        found.sort(key=lambda m: m.model_id)
        keys = [(o.get("field_name", ""), o.get("ascending", True)) for o in order] or [
            ("creation_timestamp", False)
        ]
        for name, ascending in reversed(keys):
            if isinstance(name, str) and name.startswith("metrics."):
                key = name[len("metrics.") :]
                # models without the metric sort last, either direction
                present = [m for m in found if key in latest[m.model_id]]
                absent = [m for m in found if key not in latest[m.model_id]]
                present.sort(key=lambda m: latest[m.model_id][key], reverse=not ascending)
                found = present + absent
                continue
            if name not in _LM_ATTRIBUTES:
                raise InvalidParameterValue(
                    "order_by.field_name",
                    name,
                    f"order by metrics.<key> or one of {', '.join(_LM_ATTRIBUTES)}",
                )
            found.sort(key=_LM_ATTRIBUTES[name], reverse=not ascending)
        return found, points

    found, points = await _blocking(search)
    models, token = _page(found, fields, 100, 1000)
    out: dict[str, object] = {
        "models": [_logged_model_json(m, points.get(m.model_id, [])) for m in models]
    }
    if token:
        out["next_page_token"] = token
    return _json(out)


async def _log_outputs(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    run_id = fields.string("run_id", required=True)
    outputs = []
    for index, item in enumerate(fields.objects("models")):
        model_id, step = item.get("model_id"), item.get("step", 0)
        if not isinstance(model_id, str) or not model_id:
            raise InvalidParameterValue(f"models[{index}].model_id", model_id, "is required")
        outputs.append((model_id, int(step) if str(step).lstrip("-").isdigit() else 0))
    await _blocking(_service(request).log_outputs, run_id, outputs)
    return _ok()


# -- registered models --------------------------------------------------------------------


async def _create_registered_model(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    service = _service(request)

    def create() -> dict[str, object]:
        record = service.create_registered_model(
            fields.string("name", required=True), fields.string("description"), _tags(fields)
        )
        return _registered_doc(service, record)

    return _json({"registered_model": await _blocking(create)})


async def _get_registered_model(request: web.Request) -> web.Response:
    fields = await _fields(request)
    service = _service(request)
    name = fields.string("name", required=True)

    def get() -> dict[str, object]:
        return _registered_doc(service, service.get_registered_model(name))

    return _json({"registered_model": await _blocking(get)})


async def _rename_registered_model(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    service = _service(request)
    name = fields.string("name", required=True)
    new_name = fields.string("new_name", required=True)

    def rename() -> dict[str, object]:
        return _registered_doc(service, service.rename_registered_model(name, new_name))

    return _json({"registered_model": await _blocking(rename)})


async def _update_registered_model(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    service = _service(request)
    name = fields.string("name", required=True)
    description = fields.string("description")

    def update() -> dict[str, object]:
        return _registered_doc(service, service.update_registered_model(name, description))

    return _json({"registered_model": await _blocking(update)})


async def _delete_registered_model(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    name = fields.string("name", required=True)
    await _blocking(_service(request).delete_registered_model, name)
    return _ok()


_RM_ORDER = {
    "name": lambda r: r.name,
    "creation_timestamp": lambda r: r.creation_time,
    "last_updated_timestamp": lambda r: r.last_update_time,
}


def _order(clauses: Sequence[str], allowed: Mapping[str, Any]) -> list[tuple[str, bool]]:
    out = []
    for index, clause in enumerate(clauses):
        match = re.fullmatch(r"\s*(\w+)(?:\s+(ASC|DESC))?\s*", clause, re.IGNORECASE)
        if match is None or match.group(1) not in allowed:
            raise InvalidParameterValue(
                f"order_by[{index}]", clause, f"order by one of {', '.join(allowed)}"
            )
        out.append((match.group(1), (match.group(2) or "ASC").upper() == "ASC"))
    return out


async def _search_registered_models(request: web.Request) -> web.Response:
    fields = await _fields(request)
    text = fields.string("filter")
    terms = _terms(text)
    order = _order(fields.strings("order_by") or _query_list(request, "order_by"), _RM_ORDER)
    service = _service(request)

    def get(record: RegisteredModelRecord, term: _Term) -> str | int | None:
        if term.kind == "tag":
            return record.tags.get(term.key)
        if term.kind == "attribute" and term.key == "name":
            return record.name
        raise InvalidParameterValue("filter", text, "filter on name or tags.<key>")

    def search() -> tuple[list[dict[str, object]], str]:
        found = [
            r
            for r in service.search_registered_models()
            if _matches(terms, functools.partial(get, r), text)
        ]
        for key, ascending in reversed(order or [("name", True)]):
            found.sort(key=_RM_ORDER[key], reverse=not ascending)
        page, token = _page(found, fields, 100, 1000)
        return [_registered_doc(service, r) for r in page], token

    models, token = await _blocking(search)
    out: dict[str, object] = {"registered_models": models}
    if token:
        out["next_page_token"] = token
    return _json(out)


def _query_list(request: web.Request, name: str) -> list[str]:
    return request.query.getall(name, []) if request.method == "GET" else []


async def _get_latest_versions(request: web.Request) -> web.Response:
    fields = await _fields(request)
    name = fields.string("name", required=True)
    stages = fields.strings("stages") or _query_list(request, "stages")
    versions = await _blocking(_service(request).latest_versions, name, stages)
    return _json({"model_versions": [_version_json(v) for v in versions]})


async def _set_registered_model_tag(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    await _blocking(
        _service(request).set_registered_model_tag,
        fields.string("name", required=True),
        fields.string("key", required=True),
        fields.string("value"),
    )
    return _ok()


async def _delete_registered_model_tag(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    await _blocking(
        _service(request).delete_registered_model_tag,
        fields.string("name", required=True),
        fields.string("key", required=True),
    )
    return _ok()


async def _set_alias(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    await _blocking(
        _service(request).set_alias,
        fields.string("name", required=True),
        fields.string("alias", required=True),
        fields.string("version", required=True),
    )
    return _ok()


async def _delete_alias(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    await _blocking(
        _service(request).delete_alias,
        fields.string("name", required=True),
        fields.string("alias", required=True),
    )
    return _ok()


async def _get_version_by_alias(request: web.Request) -> web.Response:
    fields = await _fields(request)
    version = await _blocking(
        _service(request).version_by_alias,
        fields.string("name", required=True),
        fields.string("alias", required=True),
    )
    return _json({"model_version": _version_json(version)})


# -- model versions -----------------------------------------------------------------------


async def _create_model_version(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    version = await _blocking(
        _service(request).create_model_version,
        fields.string("name", required=True),
        fields.string("source", required=True),
        fields.string("run_id"),
        fields.string("model_id"),
        fields.string("description"),
        fields.string("run_link"),
        _tags(fields),
    )
    return _json({"model_version": _version_json(version)})


def _name_version(fields: _Fields) -> tuple[str, str]:
    return fields.string("name", required=True), fields.string("version", required=True)


async def _get_model_version(request: web.Request) -> web.Response:
    name, version = _name_version(await _fields(request))
    record = await _blocking(_service(request).get_model_version, name, version)
    return _json({"model_version": _version_json(record)})


async def _update_model_version(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    name, version = _name_version(fields)
    record = await _blocking(
        _service(request).update_model_version, name, version, fields.string("description")
    )
    return _json({"model_version": _version_json(record)})


async def _transition_stage(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    name, version = _name_version(fields)
    archive = fields.raw("archive_existing_versions")
    if archive is not None and not isinstance(archive, bool):
        archive = str(archive).lower() == "true"
    record = await _blocking(
        _service(request).transition_stage,
        name,
        version,
        fields.string("stage", required=True),
        bool(archive),
    )
    return _json({"model_version": _version_json(record)})


async def _delete_model_version(request: web.Request) -> web.Response:
    _writer(request)
    name, version = _name_version(await _fields(request))
    await _blocking(_service(request).delete_model_version, name, version)
    return _ok()


async def _get_download_uri(request: web.Request) -> web.Response:
    name, version = _name_version(await _fields(request))
    record = await _blocking(_service(request).get_model_version, name, version)
    return _json({"artifact_uri": record.storage_location})


async def _set_model_version_tag(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    name, version = _name_version(fields)
    await _blocking(
        _service(request).set_model_version_tag,
        name,
        version,
        fields.string("key", required=True),
        fields.string("value"),
    )
    return _ok()


async def _delete_model_version_tag(request: web.Request) -> web.Response:
    _writer(request)
    fields = await _fields(request)
    name, version = _name_version(fields)
    await _blocking(
        _service(request).delete_model_version_tag,
        name,
        version,
        fields.string("key", required=True),
    )
    return _ok()


_MV_ORDER = {
    "name": lambda v: v.name,
    "version_number": lambda v: v.version,
    "creation_timestamp": lambda v: v.creation_time,
    "last_updated_timestamp": lambda v: v.last_update_time,
}


async def _search_model_versions(request: web.Request) -> web.Response:
    fields = await _fields(request)
    text = fields.string("filter")
    terms = _terms(text)
    order = _order(fields.strings("order_by") or _query_list(request, "order_by"), _MV_ORDER)
    service = _service(request)
    attributes: dict[str, Callable[[ModelVersionRecord], str | int]] = {
        "name": lambda v: v.name,
        "run_id": lambda v: v.run_id,
        "source_path": lambda v: v.source,
        "version_number": lambda v: v.version,
        "model_id": lambda v: v.model_id,
    }

    def get(record: ModelVersionRecord, term: _Term) -> str | int | None:
        if term.kind == "tag":
            return record.tags.get(term.key)
        if term.kind == "attribute" and term.key in attributes:
            return attributes[term.key](record)
        raise InvalidParameterValue("filter", text, f"filter on {', '.join(attributes)} or tags")

    def search() -> list[ModelVersionRecord]:
        found = [
            v
            for v in service.search_model_versions()
            if _matches(terms, functools.partial(get, v), text)
        ]
        for key, ascending in reversed(
            order or [("last_updated_timestamp", False), ("name", True), ("version_number", False)]
        ):
            found.sort(key=_MV_ORDER[key], reverse=not ascending)
        return found

    versions, token = _page(await _blocking(search), fields, 10_000, 200_000)
    out: dict[str, object] = {"model_versions": [_version_json(v) for v in versions]}
    if token:
        out["next_page_token"] = token
    return _json(out)


_ROUTES = (
    ("POST", "/logged-models", _create_logged_model),
    ("POST", "/logged-models/search", _search_logged_models),
    ("GET", "/logged-models/{model_id}", _get_logged_model),
    ("PATCH", "/logged-models/{model_id}", _finalize_logged_model),
    ("DELETE", "/logged-models/{model_id}", _delete_logged_model),
    ("PATCH", "/logged-models/{model_id}/tags", _set_logged_model_tags),
    ("DELETE", "/logged-models/{model_id}/tags/{tag_key}", _delete_logged_model_tag),
    ("POST", "/logged-models/{model_id}/params", _log_logged_model_params),
    ("GET", "/logged-models/{model_id}/artifacts/directories", _list_logged_model_artifacts),
    ("GET", "/logged-models/{model_id}/artifacts/files", _get_logged_model_artifact),
    ("POST", "/runs/outputs", _log_outputs),
    ("POST", "/registered-models/create", _create_registered_model),
    ("GET", "/registered-models/get", _get_registered_model),
    ("POST", "/registered-models/rename", _rename_registered_model),
    ("PATCH", "/registered-models/update", _update_registered_model),
    ("DELETE", "/registered-models/delete", _delete_registered_model),
    ("GET", "/registered-models/search", _search_registered_models),
    ("POST", "/registered-models/get-latest-versions", _get_latest_versions),
    ("GET", "/registered-models/get-latest-versions", _get_latest_versions),
    ("POST", "/registered-models/set-tag", _set_registered_model_tag),
    ("DELETE", "/registered-models/delete-tag", _delete_registered_model_tag),
    ("POST", "/registered-models/alias", _set_alias),
    ("DELETE", "/registered-models/alias", _delete_alias),
    ("GET", "/registered-models/alias", _get_version_by_alias),
    ("POST", "/model-versions/create", _create_model_version),
    ("GET", "/model-versions/get", _get_model_version),
    ("PATCH", "/model-versions/update", _update_model_version),
    ("DELETE", "/model-versions/delete", _delete_model_version),
    ("GET", "/model-versions/search", _search_model_versions),
    ("POST", "/model-versions/transition-stage", _transition_stage),
    ("GET", "/model-versions/get-download-uri", _get_download_uri),
    ("POST", "/model-versions/set-tag", _set_model_version_tag),
    ("DELETE", "/model-versions/delete-tag", _delete_model_version_tag),
)


def add_model_routes(app: web.Application) -> None:
    """Register the LoggedModel and Model Registry routes under MLflow's prefixes."""
    for prefix in MLFLOW_PREFIXES:
        for method, path, handler in _ROUTES:
            app.router.add_route(method, prefix + path, handler)
