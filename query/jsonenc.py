"""JSON for the HTTP API: Arrow columns to JSON lists, non-finite floats as strings.

The one place that applies API.md's number rule ("NaN", "Infinity", "-Infinity"); it knows
nothing of HTTP or DuckDB and never emits the non-standard NaN/Infinity literals.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import math
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from steppe.errors import InvalidParameterValue

__all__ = [
    "column_values",
    "dumps",
    "float_list",
    "float_value",
    "json_value",
    "parse_body",
    "table_rows",
]

JsonFloat = float | str | None


def float_value(value: float | None) -> JsonFloat:
    """A float as API.md sends it: finite as is, else "NaN", "Infinity" or "-Infinity"."""
    if value is None or math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def float_list(column: pa.Array | pa.ChunkedArray) -> list[JsonFloat]:
    """A float column as a JSON-ready list; only the non-finite entries are visited in Python."""
    if isinstance(column, pa.ChunkedArray):
        # One contiguous array: pyarrow 25's chunked indices_nonzero crashes (SIGSEGV) on
        # some chunk layouts that DuckDB results have.
        column = column.combine_chunks()
    values: list[JsonFloat] = (
        # numpy's tolist is several times Arrow's to_pylist; nulls need Arrow's (None).
        column.to_numpy(zero_copy_only=False).tolist()
        if column.null_count == 0
        else column.to_pylist()
    )
    not_finite = pc.fill_null(pc.invert(pc.is_finite(column)), False)
    for index in pc.indices_nonzero(not_finite).to_pylist():
        values[index] = float_value(values[index])
    return values


def dumps(document: object, *, floats_converted: bool = False) -> bytes:
    """Compact UTF-8 JSON. Non-finite floats must already be strings (``float_value``,
    ``float_list``): one left as a float raises ValueError rather than sending invalid JSON.
    ``floats_converted=True`` skips that check (a walk of the document) for a caller whose
    every float came through ``float_list``/``float_value``, as the series answers' do.

    orjson encodes a series answer's ~200k floats about ten times faster than ``json``
    (benchmarks/README.md item 13); the standard library stays the fallback for what orjson
    refuses (integers past 64 bits, which SQL results can hold) and the referee for NaN.
    """
    try:
        body: bytes = orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        pass  # a value orjson does not take (an integer past 64 bits): the slow path below
    else:
        # orjson writes a non-finite float as null; refuse it as json.dumps does.
        if floats_converted or b"null" not in body or _has_no_raw_non_finite(document):
            return body
    return json.dumps(document, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode()


def _has_no_raw_non_finite(document: object) -> bool:
    """True when no float in ``document`` is NaN or infinite (a null came from a None)."""
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return True


def json_value(value: object) -> object:
    """Any value Arrow's ``to_pylist`` gives, as JSON: non-finite floats as above, decimals
    as numbers, times as ISO 8601 strings, bytes as base64, nested values recursively."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return float_value(value)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return str(value)
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return str(value)  # timedelta, intervals, UUIDs, ...: their readable text


def column_values(column: pa.Array | pa.ChunkedArray) -> list[object]:
    """One column as JSON-ready values; plain ints, strings and bools skip the Python pass."""
    kind = column.type
    if pa.types.is_floating(kind):
        return list(float_list(column))
    values: list[object] = column.to_pylist()
    if (
        pa.types.is_integer(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_null(kind)
    ):
        return values
    return [json_value(v) for v in values]


def table_rows(table: pa.Table) -> list[list[object]]:
    """A table as a list of rows (lists, so duplicate column names survive)."""
    columns = [column_values(column) for column in table.columns]
    return [list(row) for row in zip(*columns, strict=True)] if columns else []


def parse_body(body: bytes, *, double_encoded: bool = False) -> Any:
    """A request body's JSON (empty: ``{}``), or InvalidParameterValue naming the rule:
    not JSON, nested too deeply for the parser, or a string with a lone surrogate escape
    (``"\\ud800"``: no UTF-8 text, so nothing could store or answer it).
    ``double_encoded``: a JSON string holding the document is unwrapped once."""
    try:
        document = json.loads(body) if body.strip() else {}
        if double_encoded and isinstance(document, str):  # older MLflow clients do this
            document = json.loads(document)
    except RecursionError:
        raise InvalidParameterValue(
            "body", "<deeply nested JSON>", "is JSON nested too deeply"
        ) from None
    except ValueError as exc:
        text = body[:80].decode(errors="replace")
        raise InvalidParameterValue("body", text, f"is not valid JSON ({exc})") from None
    stack: list[tuple[str, object]] = [("body", document)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(where, key)
                stack.append((f"{where}.{key}" if where != "body" else key, item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, str):
            _check_text(where, value)
    return document


def _check_text(where: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "backslashreplace").decode()
        raise InvalidParameterValue(
            where, shown, "contains a lone surrogate (\\ud800-\\udfff): not valid Unicode text"
        ) from None
