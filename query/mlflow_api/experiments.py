"""MLflow's experiments routes: create, get, get-by-name, update, delete, restore, tags,
and search with MLflow's filter grammar for experiments (also used by the registry's search).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from steppe.errors import (
    InvalidParameterValue,
    ResourceDoesNotExist,
)
from steppe.ingest.catalog import (
    ExperimentRecord,
)
from steppe.query.artifacts import clean_path
from steppe.query.mlflow_api.common import (
    _INT_RE,
    _VIEW_TYPE_NUMBERS,
    DEFAULT_SEARCH_RESULTS,
    MAX_SEARCH_RESULTS,
    _blocking,
    _catalog,
    _experiment_id,
    _experiment_json,
    _experiments,
    _fields,
    _json,
    _ok,
    _page_offset,
    _page_token,
    _pairs,
    _text,
    _writer,
)
from steppe.query.search import (
    VIEW_TYPES,
)


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
