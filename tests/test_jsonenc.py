"""The HTTP API's JSON encoder (steppe.query.jsonenc): API.md's number rule on both its paths."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest

from steppe.query.jsonenc import dumps, float_list


def test_float_list_sends_non_finite_values_as_strings_and_nulls_as_null() -> None:
    column = pa.chunked_array([[1.5, math.nan], [math.inf, None, -math.inf, 0.0]])
    assert float_list(column) == [1.5, "NaN", "Infinity", None, "-Infinity", 0.0]
    assert float_list(pa.array([2.0, -math.inf])) == [2.0, "-Infinity"]


def test_dumps_refuses_a_raw_non_finite_float_rather_than_writing_null() -> None:
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            dumps({"series": [{"value": [1.0, None, bad]}], "x": None})


def test_dumps_writes_what_orjson_refuses_through_the_standard_library() -> None:
    big = 2**70  # a DuckDB HUGEINT in a SQL answer
    assert json.loads(dumps({"rows": [[big, "é"]], 3: None})) == {"rows": [[big, "é"]], "3": None}


def test_a_series_document_encodes_the_same_on_the_fast_path() -> None:
    document = {"x": [0, 64], "mean": float_list(pa.array([0.25, math.nan])), "aggregate": None}
    body = dumps(document, floats_converted=True)
    assert body == dumps(document)
    assert json.loads(body) == {"x": [0, 64], "mean": [0.25, "NaN"], "aggregate": None}
