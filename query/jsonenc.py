"""JSON for the HTTP API: Arrow columns to JSON lists, non-finite floats as strings.

The one place that applies API.md's number rule ("NaN", "Infinity", "-Infinity"); it knows
nothing of HTTP or DuckDB and never emits the non-standard NaN/Infinity literals.
"""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["dumps", "float_list", "float_value"]

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
    values: list[JsonFloat] = column.to_pylist()
    not_finite = pc.fill_null(pc.invert(pc.is_finite(column)), False)
    for index in pc.indices_nonzero(not_finite).to_pylist():
        values[index] = float_value(values[index])
    return values


def dumps(document: object) -> bytes:
    """Compact UTF-8 JSON. Raises ValueError on a non-finite float that was not converted,
    rather than sending invalid JSON."""
    return json.dumps(document, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode()
