"""MLflow's search grammar (steppe.query.search): the parser, its errors, and the compiled
DuckDB query checked against a plain-Python reference over the same runs (a real
SqliteCatalog, a real LATEST_SCHEMA table, real DuckDB), by example and by Hypothesis."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steppe.errors import InvalidParameterValue
from steppe.ingest.catalog import RunRecord
from steppe.ingest.layout import METRICS_SCHEMA, Snapshot
from steppe.ingest.sqlite_catalog import SqliteCatalog
from steppe.query.reader import Reader
from steppe.query.search import (
    Comparison,
    OrderKey,
    RunSearch,
    compile_search,
    parse_filter,
    parse_order_by,
)
from steppe.query.views import CatalogTables, CatalogView
from tests.query_data import Point, latest_rows, latest_table

NAN, INF = math.nan, math.inf

# --- the parser ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("metrics.loss < 0.1", [Comparison("metric", "loss", "<", 0.1)]),
        ("metrics.loss <= 1", [Comparison("metric", "loss", "<=", 1.0)]),
        ("metrics.loss > -2.5e-3", [Comparison("metric", "loss", ">", -0.0025)]),
        ("metrics.loss >= .5", [Comparison("metric", "loss", ">=", 0.5)]),
        ("metrics.loss = 3", [Comparison("metric", "loss", "=", 3.0)]),
        ("metrics.loss != 3", [Comparison("metric", "loss", "!=", 3.0)]),
        ("metric.acc>0.9", [Comparison("metric", "acc", ">", 0.9)]),
        ("params.lr = '0.01'", [Comparison("param", "lr", "=", "0.01")]),
        ('param.lr != "0.01"', [Comparison("param", "lr", "!=", "0.01")]),
        ("parameters.opt LIKE 'ad%'", [Comparison("param", "opt", "LIKE", "ad%")]),
        ("params.opt ilike '%AM'", [Comparison("param", "opt", "ILIKE", "%AM")]),
        ("tags.team = 'x'", [Comparison("tag", "team", "=", "x")]),
        ("tag.team like 'x_'", [Comparison("tag", "team", "LIKE", "x_")]),
        ("tags.mlflow.runName = 'r1'", [Comparison("tag", "mlflow.runName", "=", "r1")]),
        ("attributes.status = 'FINISHED'", [Comparison("attribute", "status", "=", "FINISHED")]),
        (
            "attribute.run_name ILIKE 'base%'",
            [Comparison("attribute", "run_name", "ILIKE", "base%")],
        ),
        ("attr.user_id != 'ann'", [Comparison("attribute", "user_id", "!=", "ann")]),
        (
            "run.artifact_uri LIKE 's3://%'",
            [Comparison("attribute", "artifact_uri", "LIKE", "s3://%")],
        ),
        (
            "attributes.lifecycle_stage = 'active'",
            [Comparison("attribute", "lifecycle_stage", "=", "active")],
        ),
        (
            "attributes.start_time >= 1700000000000",
            [Comparison("attribute", "start_time", ">=", 1700000000000)],
        ),
        ("attributes.end_time < 5", [Comparison("attribute", "end_time", "<", 5)]),
        ("attributes.created > 5", [Comparison("attribute", "start_time", ">", 5)]),
        ("attributes.`Run name` = 'x'", [Comparison("attribute", "run_name", "=", "x")]),
        ("status = 'RUNNING'", [Comparison("attribute", "status", "=", "RUNNING")]),
        (
            "attributes.run_id IN ('a', \"b\")",
            [Comparison("attribute", "run_id", "IN", ("a", "b"))],
        ),
        ("attributes.run_id not in ('a')", [Comparison("attribute", "run_id", "NOT IN", ("a",))]),
        ("metrics.`eval loss` < 1", [Comparison("metric", "eval loss", "<", 1.0)]),
        ('metrics."eval-loss" < 1', [Comparison("metric", "eval-loss", "<", 1.0)]),
        ("metrics.'quoted' < 1", [Comparison("metric", "quoted", "<", 1.0)]),
        ("metrics.eval/loss < 1", [Comparison("metric", "eval/loss", "<", 1.0)]),
        ("`metrics`.loss < 1", [Comparison("metric", "loss", "<", 1.0)]),
        ("params.note = 'it''s'", [Comparison("param", "note", "=", "it's")]),
        ('params.note = "say ""hi"""', [Comparison("param", "note", "=", 'say "hi"')]),
        ("metrics.`we``ird` = 1", [Comparison("metric", "we`ird", "=", 1.0)]),
        (
            "metrics.a < 1 AND params.b = 'x' and tags.c LIKE '%' And status = 'KILLED'",
            [
                Comparison("metric", "a", "<", 1.0),
                Comparison("param", "b", "=", "x"),
                Comparison("tag", "c", "LIKE", "%"),
                Comparison("attribute", "status", "=", "KILLED"),
            ],
        ),
        ("", []),
        ("   ", []),
    ],
)
def test_parse_filter(text: str, want: list[Comparison]) -> None:
    assert list(parse_filter(text)) == want


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("metrics.a < 1 OR metrics.b < 1", "OR is not supported"),
        ("(metrics.a < 1)", "parentheses are not supported"),
        ("metrics.a < 1 AND (params.b = 'x')", "parentheses are not supported"),
        ("metrics.a < '1'", "metrics compare with numbers"),
        ("metrics.a LIKE '1%'", "comparator LIKE is not allowed for metrics"),
        ("metrics.a IN ('1')", "comparator IN is not allowed for metrics"),
        ("params.a = 1", "params are strings: quote the value"),
        ("tags.a < 'x'", "comparator < is not allowed for tags"),
        ("params.a IN ('x')", "comparator IN is not allowed for params"),
        ("attributes.status IN ('A')", "only attributes.run_id supports IN"),
        ("attributes.status = 1", "attribute status is a string"),
        ("attributes.start_time = '5'", "milliseconds since the Unix epoch"),
        ("attributes.start_time > 1.5", "milliseconds since the Unix epoch"),
        (
            "attributes.start_time LIKE '5'",
            "comparator LIKE is not allowed for attribute start_time",
        ),
        ("attributes.experiment_id = '0'", "unknown attribute 'experiment_id'"),
        ("nope = 'x'", "unknown attribute 'nope'"),
        ("metricz.a < 1", "unknown prefix 'metricz'"),
        ("datasets.name = 'x'", "dataset filters are not supported"),
        ("attributes.run_id IN ()", "IN lists hold quoted strings"),
        ("attributes.run_id IN 'a'", "IN needs a parenthesised list"),
        ("attributes.run_id = ('a')", "a parenthesised list needs IN"),
        ("attributes.run_id IN ('a' 'b')", "expected ',' or ')'"),
        ("params.a = 'x", "unterminated '...' quote"),
        ("metrics.`a < 1", "unterminated `...` quote"),
        ("metrics.a <> 1", "use !="),
        ("metrics.a == 1", "use ="),
        ("params.a NOT LIKE 'x'", "NOT LIKE is not supported"),
        ("params.a IS NULL", "IS / IS NULL is not supported"),
        ("metrics.a 1", "expected a comparator"),
        ("metrics.a <", "expected a value"),
        ("metrics.a < abc", "expected a value"),
        ("metrics.a < 1 metrics.b < 2", "expected AND or the end of the filter"),
        ("metrics.a < 1 AND", "expected a comparison after AND"),
        ("AND metrics.a < 1", "expected a comparison before AND"),
        ("metrics. < 1", "expected a name after 'metrics.'"),
        ("metrics.`` < 1", "the name after 'metrics.' is empty"),
        ("= 1", "expected a comparison"),
    ],
)
def test_bad_filters_name_the_rule_and_the_place(text: str, needle: str) -> None:
    with pytest.raises(InvalidParameterValue) as caught:
        parse_filter(text)
    assert caught.value.field == "filter_string"
    assert needle in caught.value.rule, caught.value.rule
    assert re.search(r"\(at character \d+\)", caught.value.rule)


def test_or_error_points_at_the_or() -> None:
    with pytest.raises(InvalidParameterValue) as caught:
        parse_filter("metrics.a < 1 or metrics.b < 1")
    assert "(at character 15)" in caught.value.rule


@pytest.mark.parametrize(
    ("clauses", "want"),
    [
        (["metrics.loss"], [OrderKey("metric", "loss", True)]),
        (["metrics.loss ASC"], [OrderKey("metric", "loss", True)]),
        (["metrics.`eval loss` desc"], [OrderKey("metric", "eval loss", False)]),
        (
            ['params."lr" DESC', "tags.team"],
            [OrderKey("param", "lr", False), OrderKey("tag", "team", True)],
        ),
        (["start_time"], [OrderKey("attribute", "start_time", True)]),
        (["attributes.experiment_id DESC"], [OrderKey("attribute", "experiment_id", False)]),
        (["attr.created"], [OrderKey("attribute", "start_time", True)]),
        ([], []),
    ],
)
def test_parse_order_by(clauses: list[str], want: list[OrderKey]) -> None:
    assert list(parse_order_by(clauses)) == want


@pytest.mark.parametrize(
    ("clauses", "field", "needle"),
    [
        (["metrics.loss up"], "order_by[0]", "expected ASC, DESC"),
        (["metrics.a", "params.b DESC extra"], "order_by[1]", "expected ASC, DESC"),
        (["attributes.nope"], "order_by[0]", "unknown attribute 'nope'"),
        ([""], "order_by[0]", "non-empty string"),
        (["foo.bar"], "order_by[0]", "unknown prefix 'foo'"),
    ],
)
def test_bad_order_by(clauses: list[str], field: str, needle: str) -> None:
    with pytest.raises(InvalidParameterValue) as caught:
        parse_order_by(clauses)
    assert caught.value.field == field and needle in caught.value.rule


def test_compiled_sql_binds_every_user_value() -> None:
    evil = "x' OR 1=1 --"
    search = RunSearch(
        experiment_ids=("0", evil),
        filters=parse_filter(
            f"params.`{evil}` = '{evil.replace(chr(39), chr(39) * 2)}' "
            f"AND attributes.run_id IN ('{evil.replace(chr(39), chr(39) * 2)}')"
        ),
        order_by=parse_order_by([f"tags.`{evil}` DESC"]),
    )
    sql, params = compile_search(search)
    assert evil not in sql and "OR 1=1" not in sql
    assert sum(1 for value in params.values() if value == evil) == 5


# --- execution against the reference ----------------------------------------------------------


@dataclass
class World:
    catalog: SqliteCatalog
    view: CatalogView
    snapshot: Snapshot
    points: list[Point]


@pytest.fixture
def reader() -> Iterator[Reader]:
    r = Reader(threads=1)
    yield r
    r.close()


def make_world(
    runs: Sequence[dict[str, object]], points: list[Point], path: Path | str = ":memory:"
) -> World:
    catalog = SqliteCatalog(path)
    exp = catalog.create_experiment("second")
    for spec in runs:
        run_id = str(spec["run_id"])
        catalog.create_run(
            run_id,
            exp.experiment_id if spec.get("second") else "0",
            str(spec.get("name", "")),
            int(spec["start"]),  # type: ignore[call-overload]
            user_id=str(spec.get("user", "")),
        )
        if spec.get("status"):
            catalog.update_run(run_id, status=str(spec["status"]), end_time=spec.get("end"))  # type: ignore[arg-type]
        params = dict(spec.get("params", {}))  # type: ignore[call-overload]
        if params:
            catalog.log_params(run_id, list(params.items()))
        tags = dict(spec.get("tags", {}))  # type: ignore[call-overload]
        if tags:
            catalog.set_tags(run_id, list(tags.items()))
    snapshot = Snapshot(files=(), tail=METRICS_SCHEMA.empty_table(), latest=latest_table(points))
    return World(catalog, CatalogTables(catalog).current(), snapshot, points)


def run_search(reader: Reader, world: World, search: RunSearch) -> list[str]:
    sql, params = compile_search(search)
    tables = {**world.view.tables(), "latest_metrics": world.snapshot.latest}
    table: pa.Table = reader.query(world.snapshot, sql, params, tables)
    ids: list[str] = table.column("run_id").to_pylist()
    return ids


# The reference: MLflow's Python semantics (SearchUtils.filter / SearchUtils.sort), written
# independently of the SQL compiler.


def like(value: str, pattern: str, *, fold: bool) -> bool:
    regex = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, value, re.DOTALL | (re.IGNORECASE if fold else 0)) is not None


def compare(lhs: object, op: str, rhs: object) -> bool:
    if lhs is None:
        return False
    if op == "=":
        return lhs == rhs
    if op == "!=":
        return lhs != rhs
    if op == "<":
        return lhs < rhs  # type: ignore[operator]
    if op == "<=":
        return lhs <= rhs  # type: ignore[operator]
    if op == ">":
        return lhs > rhs  # type: ignore[operator]
    if op == ">=":
        return lhs >= rhs  # type: ignore[operator]
    if op == "LIKE":
        return like(str(lhs), str(rhs), fold=False)
    if op == "ILIKE":
        return like(str(lhs), str(rhs), fold=True)
    if op == "IN":
        return lhs in rhs  # type: ignore[operator]
    if op == "NOT IN":
        return lhs not in rhs  # type: ignore[operator]
    raise AssertionError(op)


def lhs_of(run: RunRecord, metrics: dict[str, float], kind: str, key: str) -> object:
    if kind == "metric":
        return metrics.get(key)
    if kind == "param":
        return run.params.get(key)
    if kind == "tag":
        return run.tags.get(key)
    return getattr(run, key)


def reference_search(world: World, search: RunSearch) -> list[str]:
    metrics: dict[str, dict[str, float]] = {}
    for (run_id, key), row in latest_rows(world.points).items():
        metrics.setdefault(run_id, {})[key] = row["value"]  # type: ignore[assignment]
    runs = list(world.view.records.values())
    if search.experiment_ids is not None:
        runs = [r for r in runs if r.experiment_id in search.experiment_ids]
    if search.lifecycle_stages is not None:
        runs = [r for r in runs if r.lifecycle_stage in search.lifecycle_stages]
    runs = [
        r
        for r in runs
        if all(
            compare(lhs_of(r, metrics.get(r.run_id, {}), c.kind, c.key), c.op, c.value)
            for c in search.filters
        )
    ]
    runs.sort(key=lambda r: (-r.start_time, r.run_id))
    for order in reversed(search.order_by):

        def sort_key(run: RunRecord, order: OrderKey = order) -> tuple[bool, object]:
            value = lhs_of(run, metrics.get(run.run_id, {}), order.kind, order.key)
            fill = (1 if order.ascending else -1) * math.inf
            missing = value is None
            nan = isinstance(value, float) and math.isnan(value)
            if missing:
                value = fill if order.kind in ("metric", "attribute") else None
            elif nan:
                value = -fill
            if isinstance(value, str) or value is None:
                # Strings: missing last in both directions (None cannot be compared).
                rank = (missing,) if order.ascending else (not missing,)
                return (*rank, value or "")  # type: ignore[return-value]
            return (missing or nan, value) if order.ascending else (not (missing or nan), value)

        runs.sort(key=sort_key, reverse=not order.ascending)
    return [r.run_id for r in runs][search.offset : search.offset + search.limit]


RUNS: list[dict[str, object]] = [
    {"run_id": "r1", "start": 100, "name": "base", "status": "FINISHED", "end": 900,
     "params": {"lr": "0.1", "opt": "adam"}, "tags": {"team": "red"}, "user": "ann"},
    {"run_id": "r2", "start": 300, "name": "Base-2", "status": "FAILED", "end": 400,
     "params": {"lr": "0.01", "opt": "sgd"}, "tags": {"team": "blue"}},
    {"run_id": "r3", "start": 300, "name": "other", "params": {"lr": "0.001"},
     "tags": {"team": "Red", "note": "it's 100%"}, "second": True},
    {"run_id": "r4", "start": 200, "name": "nan-run", "status": "KILLED", "end": 250},
    {"run_id": "r5", "start": 50, "name": "no-metrics", "params": {"opt": "adamw"}},
]  # fmt: skip
POINTS: list[Point] = [
    ("r1", "loss", 0, 1, 0.5), ("r1", "loss", 9, 2, 0.05), ("r1", "acc", 9, 2, 0.9),
    ("r2", "loss", 5, 1, 0.2), ("r2", "acc", 5, 1, 0.95),
    ("r3", "loss", 1, 1, 0.05), ("r3", "acc", 1, 1, -INF),
    ("r4", "loss", 3, 1, NAN), ("r4", "acc", 3, 1, INF),
]  # fmt: skip


@pytest.fixture
def world() -> Iterator[World]:
    w = make_world(RUNS, POINTS)
    yield w
    w.catalog.close()


@pytest.mark.parametrize(
    ("filter_string", "order_by", "want"),
    [
        ("", [], ["r2", "r3", "r4", "r1", "r5"]),  # start_time DESC, then run_id
        ("metrics.loss < 0.1", [], ["r3", "r1"]),
        ("metrics.loss <= 0.2", ["metrics.loss ASC"], ["r3", "r1", "r2"]),  # tie: start DESC
        ("metrics.loss > 0.1", [], ["r2"]),  # NaN never compares true ...
        ("metrics.loss != 0.05", [], ["r2", "r4"]),  # ... except with !=
        ("metrics.acc >= 0.95", [], ["r2", "r4"]),  # +inf is larger than everything
        ("metrics.acc < 0", [], ["r3"]),
        ("metrics.missing < 1", [], []),
        ("params.lr = '0.1'", [], ["r1"]),
        ("params.lr != '0.1'", [], ["r2", "r3"]),  # runs without lr do not match
        ("params.opt LIKE 'adam%'", [], ["r1", "r5"]),
        ("params.opt LIKE 'ADAM%'", [], []),
        ("params.opt ILIKE 'ADAM%'", [], ["r1", "r5"]),
        ("params.opt LIKE 'ada_'", [], ["r1"]),
        ("tags.team ILIKE 'red'", [], ["r3", "r1"]),
        ("tags.note LIKE '%100\\%'", [], []),  # no escape character: backslash is literal
        ("tags.note LIKE '%100%'", [], ["r3"]),
        ("tags.mlflow.runName = 'other'", [], ["r3"]),
        ("attributes.status = 'FINISHED'", [], ["r1"]),
        ("attributes.status != 'RUNNING'", [], ["r2", "r4", "r1"]),
        ("attributes.run_name ILIKE 'base%'", [], ["r2", "r1"]),
        ("attributes.run_id IN ('r1', 'r5', 'zz')", [], ["r1", "r5"]),
        ("attributes.run_id NOT IN ('r1', 'r5')", [], ["r2", "r3", "r4"]),
        ("attributes.start_time >= 200", [], ["r2", "r3", "r4"]),
        ("attributes.end_time < 500", [], ["r2", "r4"]),  # running runs have no end_time
        ("attributes.user_id = 'ann'", [], ["r1"]),
        ("attributes.lifecycle_stage = 'active'", [], ["r2", "r3", "r4", "r1", "r5"]),
        ("attributes.artifact_uri LIKE '%/r3/%'", [], ["r3"]),
        ("metrics.loss < 1 AND params.opt = 'adam'", [], ["r1"]),
        ("", ["metrics.loss ASC"], ["r3", "r1", "r2", "r4", "r5"]),  # values, NaN, missing
        ("", ["metrics.loss DESC"], ["r2", "r3", "r1", "r4", "r5"]),  # NaN, missing still last
        ("", ["metrics.acc DESC"], ["r4", "r2", "r1", "r3", "r5"]),
        ("", ["params.lr ASC"], ["r3", "r2", "r1", "r4", "r5"]),  # strings; missing last
        ("", ["params.lr DESC"], ["r1", "r2", "r3", "r4", "r5"]),
        ("", ["attributes.end_time DESC"], ["r1", "r2", "r4", "r3", "r5"]),  # NULL last
        ("", ["attributes.run_name"], ["r2", "r1", "r4", "r5", "r3"]),
        ("", ["tags.team", "metrics.loss DESC"], ["r3", "r2", "r1", "r4", "r5"]),
    ],
)
def test_search_matches_mlflow_semantics(
    reader: Reader, world: World, filter_string: str, order_by: list[str], want: list[str]
) -> None:
    search = RunSearch(
        filters=parse_filter(filter_string), order_by=parse_order_by(order_by), limit=100
    )
    assert run_search(reader, world, search) == want
    assert reference_search(world, search) == want


def test_search_scopes_experiments_view_types_and_pages(reader: Reader, world: World) -> None:
    second = world.view.records["r3"].experiment_id
    assert run_search(reader, world, RunSearch(experiment_ids=(second,))) == ["r3"]
    assert run_search(reader, world, RunSearch(experiment_ids=())) == []
    assert run_search(reader, world, RunSearch(lifecycle_stages=("deleted",))) == []
    pages = [
        run_search(reader, world, RunSearch(limit=2, offset=offset)) for offset in (0, 2, 4, 6)
    ]
    assert pages == [["r2", "r3"], ["r4", "r1"], ["r5"], []]


# --- Hypothesis: random runs, filters and orders against the reference ----------------------

NAMES = ["a", "b", "A", "ab", "a_b", "a%", "x y", "it's", ""]
KEYS = ["k1", "k2", "k.3"]
finite = st.floats(-1e6, 1e6, allow_nan=False, width=32).map(float)
metric_values = st.one_of(finite, st.sampled_from([NAN, INF, -INF, 0.0, 1.0]))
run_specs = st.lists(
    st.fixed_dictionaries(
        {
            "start": st.integers(0, 5),
            "name": st.sampled_from(NAMES[:-1]),
            "status": st.sampled_from(["", "FINISHED", "FAILED"]),
            "end": st.one_of(st.none(), st.integers(0, 9)),
            "params": st.dictionaries(st.sampled_from(KEYS), st.sampled_from(NAMES), max_size=2),
            "tags": st.dictionaries(st.sampled_from(KEYS), st.sampled_from(NAMES), max_size=2),
            "metrics": st.dictionaries(st.sampled_from(KEYS), metric_values, max_size=3),
            "second": st.booleans(),
        }
    ),
    min_size=1,
    max_size=8,
)


def quote_key(key: str, style: int) -> str:
    if style == 0 and re.fullmatch(r"[\w.]+", key):
        return key
    if style == 1:
        return "`" + key.replace("`", "``") + "`"
    return '"' + key.replace('"', '""') + '"'


def quote_value(value: str, style: int) -> str:
    return "'" + value.replace("'", "''") + "'" if style else '"' + value.replace('"', '""') + '"'


@st.composite
def comparisons(draw: st.DrawFn) -> tuple[str, Comparison]:
    """A comparison and its text, written with a random prefix alias and quoting form."""
    kind = draw(st.sampled_from(["metric", "param", "tag", "attribute"]))
    style = draw(st.integers(0, 2))
    if kind == "metric":
        prefix = draw(st.sampled_from(["metrics", "metric"]))
        key = draw(st.sampled_from(KEYS))
        op = draw(st.sampled_from(["=", "!=", "<", "<=", ">", ">="]))
        number = draw(st.one_of(finite, st.sampled_from([0.0, 1.0])))
        return f"{prefix}.{quote_key(key, style)} {op} {number!r}", Comparison(
            kind, key, op, number
        )
    if kind in ("param", "tag"):
        prefix = draw(st.sampled_from(["params", "param"] if kind == "param" else ["tags", "tag"]))
        key = draw(st.sampled_from(KEYS))
        op = draw(st.sampled_from(["=", "!=", "LIKE", "ILIKE"]))
        value = draw(st.sampled_from([*NAMES, "%", "a%", "_", "%b", "A%", "%'%"]))
        text = f"{prefix}.{quote_key(key, style)} {op.lower() if style else op} {quote_value(value, style)}"  # noqa: E501
        return text, Comparison(kind, key, op, value)
    prefix = draw(st.sampled_from(["attributes.", "attribute.", "attr.", "run.", ""]))
    key = draw(st.sampled_from(["status", "run_name", "run_id", "start_time", "end_time"]))
    if key in ("start_time", "end_time"):
        op = draw(st.sampled_from(["=", "!=", "<", "<=", ">", ">="]))
        number = draw(st.integers(-1, 10))
        return f"{prefix}{key} {op} {number}", Comparison("attribute", key, op, number)
    if key == "run_id":
        ids = tuple(draw(st.lists(st.sampled_from(["r0", "r1", "r2", "zz"]), min_size=1)))
        op = draw(st.sampled_from(["IN", "NOT IN"]))
        text = f"{prefix}{key} {op} ({', '.join(quote_value(i, style) for i in ids)})"
        return text, Comparison("attribute", key, op, ids)
    op = draw(st.sampled_from(["=", "!=", "LIKE", "ILIKE"]))
    value = draw(st.sampled_from(["FINISHED", "RUNNING", "%ED", "a%", "A", "%"]))
    return f"{prefix}{key} {op} {quote_value(value, style)}", Comparison(
        "attribute", key, op, value
    )


orders = st.lists(
    st.tuples(
        st.sampled_from(
            [("metrics", k) for k in KEYS]
            + [("params", k) for k in KEYS]
            + [("tags", k) for k in KEYS]
            + [("attributes", a) for a in ("start_time", "end_time", "run_name", "status")]
        ),
        st.sampled_from(["", " ASC", " DESC", " asc", " desc"]),
    ),
    max_size=3,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    specs=run_specs,
    terms=st.lists(comparisons(), max_size=3),
    order=orders,
    joiner=st.sampled_from([" AND ", " and ", "  And  "]),
    limit=st.integers(1, 10),
    offset=st.integers(0, 3),
)
def test_search_property(
    reader: Reader,
    specs: list[dict[str, object]],
    terms: list[tuple[str, Comparison]],
    order: list[tuple[tuple[str, str], str]],
    joiner: str,
    limit: int,
    offset: int,
) -> None:
    runs = [{**spec, "run_id": f"r{i}"} for i, spec in enumerate(specs)]
    points: list[Point] = [
        (str(run["run_id"]), key, 0, 0, value)
        for run in runs
        for key, value in run["metrics"].items()  # type: ignore[attr-defined]
    ]
    text = joiner.join(t for t, _ in terms)
    filters = parse_filter(text)
    assert list(filters) == [c for _, c in terms]  # the printed form parses back
    clauses = [f"{p}.{quote_key(k, 0)}{d}" for (p, k), d in order]
    search = RunSearch(
        filters=filters, order_by=parse_order_by(clauses), limit=limit, offset=offset
    )
    world = make_world(runs, points)
    try:
        assert run_search(reader, world, search) == reference_search(world, search)
    finally:
        world.catalog.close()


def test_catalog_tables_are_cached_by_version(tmp_path: Path) -> None:
    catalog = SqliteCatalog(tmp_path / "catalog.sqlite")
    try:
        tables = CatalogTables(catalog)
        first = tables.current()
        assert tables.current() is first
        catalog.create_run("r9", "0", "n", 5)
        second = tables.current()
        assert second is not first and second.runs.num_rows == 1
        assert second.tags.to_pylist() == [{"run_id": "r9", "key": "mlflow.runName", "value": "n"}]
        assert list(second.records) == ["r9"]
    finally:
        catalog.close()


# --- over HTTP ---------------------------------------------------------------------------------


async def test_search_endpoint_filters_orders_and_pages(tmp_path: Path) -> None:
    import os

    from aiohttp.test_utils import TestClient, TestServer

    from steppe.query.app import make_app
    from tests.query_data import FixedSource

    world = make_world(RUNS, POINTS, tmp_path / "catalog.sqlite")
    info = {"version": "0.1.0", "grpc_port": 1, "http_port": 0, "pid": os.getpid()}
    app = make_app(world.catalog, FixedSource(world.snapshot), info)
    path = "/api/steppe/v1/runs/search"
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:

            async def search(body: dict[str, object]) -> dict[str, object]:
                response = await client.post(path, json=body)
                assert response.status == 200, await response.text()
                answer: dict[str, object] = await response.json()
                return answer

            def ids(answer: dict[str, object]) -> list[str]:
                return [run["info"]["run_id"] for run in answer["runs"]]  # type: ignore[attr-defined,index]

            answer = await search(
                {"filter_string": "metrics.loss < 1", "order_by": ["metrics.loss"]}
            )
            assert ids(answer) == ["r3", "r1", "r2"] and set(answer) == {"runs"}
            loss = answer["runs"][0]["data"]["metrics"]["loss"]  # type: ignore[index]
            assert loss["value"] == 0.05
            assert ids(await search({"run_view_type": "DELETED_ONLY"})) == []
            assert len(ids(await search({"run_view_type": "ACTIVE_ONLY"}))) == 5
            pages, token = [], None
            while True:
                page = await search({"max_results": 2, "page_token": token})
                pages.append(ids(page))
                token = page.get("next_page_token")  # type: ignore[assignment]
                if token is None:
                    break
            assert pages == [["r2", "r3"], ["r4", "r1"], ["r5"]]
            # Without page_token the answer keeps its old shape: just "runs".
            assert set(await search({"max_results": 1})) == {"runs"}
            # The runs table's column chooser: the keys of one experiment's runs.
            response = await client.get("/api/steppe/v1/experiments/0/keys")
            assert response.status == 200
            assert await response.json() == {
                "params": ["lr", "opt"],
                "tags": ["team"],  # r3's note is in the other experiment; no mlflow.* tags
                "metrics": ["acc", "loss"],
            }
            assert (await client.get("/api/steppe/v1/experiments/404/keys")).status == 404
            # steppe's runs table: the total over every page, min/max order, groups.
            counted = await search(
                {"filter_string": "metrics.loss < 1", "max_results": 1, "count": True}
            )
            assert ids(counted) == ["r2"] and counted["total_count"] == 3
            by_max = await search(
                {"order_by": ["metrics.loss DESC"], "metric_aggregates": {"loss": "max"}}
            )
            assert ids(by_max)[:3] == ["r1", "r2", "r3"]  # r1's max is 0.5, its latest 0.05
            grouped = await search(
                {
                    "group_by": "params.opt",
                    "group_metrics": ["loss"],
                    "metric_aggregates": {"loss": "max"},
                }
            )
            groups = {g["value"]: g for g in grouped["groups"]}  # type: ignore[attr-defined]
            assert (
                list(groups) == ["adam", "adamw", "sgd", None] and not grouped["groups_truncated"]
            )
            assert groups["adam"]["count"] == 1 and groups["adam"]["metrics"]["loss"]["mean"] == 0.5
            assert groups["adamw"]["metrics"]["loss"]["count"] == 0
            nulls = groups[None]  # r3 (0.05) and r4 (NaN, left out)
            assert nulls["count"] == 2 and nulls["metrics"]["loss"]["count"] == 1
            two = (await search({"group_by": "tags.team", "group_metrics": ["loss"]}))["groups"]
            red = next(g for g in two if g["value"] == "red")  # type: ignore[attr-defined]
            assert red["metrics"]["loss"]["mean"] == 0.05
            for body, field, needle in [
                ({"group_by": "metrics.loss"}, "group_by", "must name a param or a tag"),
                ({"metric_aggregates": {"loss": "median"}}, "metric_aggregates", "latest"),
                ({"count": "yes"}, "count", "true or false"),
                ({"filter_string": "metrics.a < 1 or metrics.b > 2"}, "filter_string", "OR"),
                ({"filter_string": 5}, "filter_string", "must be a string"),
                ({"order_by": "metrics.a"}, "order_by", "must be a list"),
                ({"order_by": ["metrics.a sideways"]}, "order_by[0]", "expected ASC, DESC"),
                ({"run_view_type": "SOME"}, "run_view_type", "must be one of"),
                ({"page_token": "%%%"}, "page_token", "not a page token"),
            ]:
                response = await client.post(path, json=body)
                assert response.status == 400
                error = await response.json()
                assert error["error_code"] == "INVALID_PARAMETER_VALUE"
                assert f"'{field}'" in error["message"] and needle in error["message"]
    finally:
        world.catalog.close()
