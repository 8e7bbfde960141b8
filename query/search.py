"""MLflow's run search grammar: filter strings and order_by clauses parsed into a small AST,
then compiled to one DuckDB query over the views (runs, params, tags, latest_metrics).

Every user value becomes a bound parameter; user text is never spliced into SQL. Parsing
knows nothing of DuckDB or HTTP; errors are InvalidParameterValue naming the rule and place.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from steppe.errors import InvalidParameterValue

__all__ = [
    "MAX_FILTER_COMPARISONS",
    "NUMERIC_ATTRIBUTES",
    "ORDERABLE_ATTRIBUTES",
    "STRING_ATTRIBUTES",
    "VIEW_TYPES",
    "Comparison",
    "OrderKey",
    "RunGrouping",
    "RunSearch",
    "compile_count",
    "compile_groups",
    "compile_search",
    "parse_filter",
    "parse_order_by",
]

Kind = Literal["metric", "param", "tag", "attribute"]
Value = float | int | str | tuple[str, ...]

#: The identifier prefixes MLflow accepts, and what each one means.
_PREFIXES: dict[str, Kind] = {
    "metric": "metric",
    "metrics": "metric",
    "param": "param",
    "params": "param",
    "parameter": "param",
    "parameters": "param",
    "tag": "tag",
    "tags": "tag",
    "attribute": "attribute",
    "attributes": "attribute",
    "attr": "attribute",
    "run": "attribute",
}
STRING_ATTRIBUTES = ("run_id", "run_name", "status", "user_id", "artifact_uri", "lifecycle_stage")
NUMERIC_ATTRIBUTES = ("start_time", "end_time")
ORDERABLE_ATTRIBUTES = (*STRING_ATTRIBUTES, *NUMERIC_ATTRIBUTES, "experiment_id")
#: MLflow's alternate attribute names.
_ATTRIBUTE_ALIASES = {
    "created": "start_time",
    "Created": "start_time",
    "run name": "run_name",
    "Run name": "run_name",
    "Run Name": "run_name",
}
#: MLflow's ViewType names -> the lifecycle stages they select (None: every run).
VIEW_TYPES: dict[str, tuple[str, ...] | None] = {
    "ACTIVE_ONLY": ("active",),
    "DELETED_ONLY": ("deleted",),
    "ALL": None,
}

#: Comparisons one filter may AND together: each is a join or a subquery, and hundreds of
#: them take DuckDB's optimizer seconds to minutes.
MAX_FILTER_COMPARISONS = 100

_NUMERIC_OPS = ("=", "!=", "<", "<=", ">", ">=")
_STRING_OPS = ("=", "!=", "LIKE", "ILIKE")
_ATTRIBUTE_STRING_OPS = (*_STRING_OPS, "IN", "NOT IN")

_NUMBER_RE = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_INTEGER_RE = re.compile(r"[-+]?[0-9]+")
_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# An unquoted key after the prefix: MLflow's name characters except space.
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_.\-/:]+")
_SYMBOL_OPS = ("!=", "<>", "<=", ">=", "==", "=", "<", ">")


@dataclass(frozen=True)
class Comparison:
    """One ``kind.key op value`` term. ``value`` is a float for metrics, an int for
    start_time/end_time, a tuple of run ids for IN/NOT IN, else a string."""

    kind: Kind
    key: str
    op: str
    value: Value


@dataclass(frozen=True)
class OrderKey:
    kind: Kind
    key: str
    ascending: bool = True
    #: For a metric: order by the run's latest value (MLflow), or by its min or max (steppe's
    #: runs table, a column showing min or max).
    column: Literal["value", "min", "max"] = "value"


@dataclass(frozen=True)
class RunSearch:
    """A compiled-ready search. ``experiment_ids`` None means every experiment;
    ``lifecycle_stages`` None means every run (MLflow's ViewType.ALL)."""

    experiment_ids: tuple[str, ...] | None = None
    filters: tuple[Comparison, ...] = ()
    order_by: tuple[OrderKey, ...] = ()
    lifecycle_stages: tuple[str, ...] | None = None
    limit: int = 1000
    offset: int = 0


@dataclass(frozen=True)
class RunGrouping:
    """The runs a search selects, grouped by one param's or tag's value (runs without it form
    the null group), with per group the count, mean, sample standard deviation, min and max
    of each metric (its latest value, or its min or max: ``OrderKey.column``), NaN left out."""

    by: OrderKey  # kind "param" or "tag"
    metrics: tuple[OrderKey, ...] = ()
    limit: int = 1000


# -- parsing -----------------------------------------------------------------------------------


class _Scanner:
    def __init__(self, text: str, field: str) -> None:
        self.text = text
        self.field = field
        self.pos = 0

    def error(self, rule: str, at: int | None = None) -> InvalidParameterValue:
        where = self.pos if at is None else at
        return InvalidParameterValue(self.field, self.text, f"{rule} (at character {where + 1})")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def at_end(self) -> bool:
        self.skip_space()
        return self.pos >= len(self.text)

    def peek_word(self) -> str:
        self.skip_space()
        match = _WORD_RE.match(self.text, self.pos)
        return match.group(0) if match else ""

    def take_word(self, word: str) -> bool:
        """Consume ``word`` (case-insensitive) if it is the next whole word."""
        if self.peek_word().upper() == word:
            self.pos += len(word)
            return True
        return False

    def quoted(self) -> str:
        """A string in '...', "..." or `...`; a doubled delimiter stands for itself."""
        quote = self.text[self.pos]
        start = self.pos
        self.pos += 1
        out: list[str] = []
        while True:
            end = self.text.find(quote, self.pos)
            if end < 0:
                raise self.error(f"unterminated {quote}...{quote} quote", start)
            out.append(self.text[self.pos : end])
            self.pos = end + 1
            if self.text.startswith(quote, self.pos):
                out.append(quote)
                self.pos += 1
                continue
            return "".join(out)

    def identifier(self, what: str) -> tuple[str, str, int]:
        """(prefix or "", key, start): ``prefix.key`` with the key bare, "quoted",
        `backquoted` or 'quoted'; a bare name alone is an attribute (MLflow)."""
        self.skip_space()
        start = self.pos
        if self.pos >= len(self.text):
            raise self.error(f"expected {what}, found the end of the text")
        char = self.text[self.pos]
        if char == "`":
            entity = self.quoted()
        else:
            match = _WORD_RE.match(self.text, self.pos)
            if match is None:
                if char == "(":
                    raise self.error(
                        "parentheses are not supported: MLflow's filter grammar is a flat "
                        "list of comparisons joined by AND"
                    )
                raise self.error(
                    f"expected {what} such as metrics.loss, params.lr, tags.team or "
                    f"attributes.status, found {self.text[self.pos : self.pos + 20]!r}"
                )
            entity = match.group(0)
            self.pos = match.end()
        if not self.text.startswith(".", self.pos):
            return "", entity, start
        self.pos += 1
        if self.pos < len(self.text) and self.text[self.pos] in "\"`'":
            key = self.quoted()
        else:
            match = _BARE_KEY_RE.match(self.text, self.pos)
            if match is None:
                raise self.error(f"expected a name after '{entity}.'")
            key = match.group(0)
            self.pos = match.end()
        if key == "":
            raise self.error(f"the name after '{entity}.' is empty", start)
        return entity, key, start


def _resolve(
    scanner: _Scanner, prefix: str, key: str, start: int, attributes: Sequence[str]
) -> tuple[Kind, str]:
    if prefix == "":
        kind: Kind = "attribute"
    elif prefix in _PREFIXES:
        kind = _PREFIXES[prefix]
    elif prefix in ("dataset", "datasets"):
        raise scanner.error("dataset filters are not supported: steppe records no datasets", start)
    else:
        raise scanner.error(
            f"unknown prefix {prefix!r}: use metrics., params., tags. or attributes. "
            "(or metric., param., tag., attribute., attr.)",
            start,
        )
    if kind == "attribute":
        key = _ATTRIBUTE_ALIASES.get(key, key)
        if key not in attributes:
            raise scanner.error(
                f"unknown attribute {key!r}: valid attributes are {', '.join(attributes)}", start
            )
    return kind, key


def _comparator(scanner: _Scanner) -> str:
    scanner.skip_space()
    at = scanner.pos
    for symbol in _SYMBOL_OPS:
        if scanner.text.startswith(symbol, scanner.pos):
            scanner.pos += len(symbol)
            if symbol == "<>":
                raise scanner.error("'<>' is not a comparator here: use !=", at)
            if symbol == "==":
                raise scanner.error("'==' is not a comparator here: use =", at)
            return symbol
    word = scanner.peek_word().upper()
    if word in ("LIKE", "ILIKE", "IN"):
        scanner.pos += len(word)
        return word
    if word == "NOT":
        scanner.pos += 3
        if scanner.take_word("IN"):
            return "NOT IN"
        raise scanner.error("only NOT IN may follow NOT (NOT LIKE is not supported)", at)
    if word == "IS":
        raise scanner.error(
            "IS / IS NULL is not supported: comparators are =, !=, <, <=, >, >=, LIKE, "
            "ILIKE, IN, NOT IN",
            at,
        )
    found = scanner.text[at : at + 10] or "the end of the text"
    raise scanner.error(
        f"expected a comparator (=, !=, <, <=, >, >=, LIKE, ILIKE, IN, NOT IN), found {found!r}",
        at,
    )


def _value(scanner: _Scanner, op: str) -> tuple[Value, str]:
    """(value, what it was: "number", "string" or "list")."""
    scanner.skip_space()
    at = scanner.pos
    if op in ("IN", "NOT IN"):
        if not scanner.text.startswith("(", scanner.pos):
            raise scanner.error(f"{op} needs a parenthesised list of quoted run ids", at)
        scanner.pos += 1
        items: list[str] = []
        while True:
            scanner.skip_space()
            if scanner.pos < len(scanner.text) and scanner.text[scanner.pos] in "'\"":
                items.append(scanner.quoted())
            else:
                raise scanner.error(f"{op} lists hold quoted strings, e.g. ('a1b2', 'c3d4')")
            scanner.skip_space()
            if scanner.text.startswith(",", scanner.pos):
                scanner.pos += 1
                continue
            if scanner.text.startswith(")", scanner.pos):
                scanner.pos += 1
                return tuple(items), "list"
            raise scanner.error(f"expected ',' or ')' in the {op} list")
    if scanner.pos < len(scanner.text) and scanner.text[scanner.pos] in "'\"":
        return scanner.quoted(), "string"
    match = _NUMBER_RE.match(scanner.text, scanner.pos)
    if match is not None and not _WORD_RE.match(scanner.text, match.end()):
        scanner.pos = match.end()
        return match.group(0), "number"
    if scanner.text.startswith("(", scanner.pos):
        raise scanner.error("a parenthesised list needs IN or NOT IN", at)
    found = scanner.text[at : at + 20] or "the end of the text"
    raise scanner.error(f"expected a value (a number or a quoted string), found {found!r}", at)


def _typed(
    scanner: _Scanner, kind: Kind, key: str, op: str, raw: Value, what: str, at: int
) -> Comparison:
    def allowed(ops: Sequence[str], subject: str) -> None:
        if op not in ops:
            raise scanner.error(
                f"comparator {op} is not allowed for {subject} (allowed: {', '.join(ops)})", at
            )

    if kind == "metric":
        allowed(_NUMERIC_OPS, "metrics")
        if what != "number":
            raise scanner.error(
                f"metrics compare with numbers: write metrics.{key} {op} 0.1 (an unquoted number)",
                at,
            )
        return Comparison(kind, key, op, float(str(raw)))
    if kind in ("param", "tag"):
        allowed(_STRING_OPS, f"{kind}s")
        if what != "string":
            raise scanner.error(
                f"{kind}s are strings: quote the value, e.g. {kind}s.{key} {op} '{raw}'", at
            )
        return Comparison(kind, key, op, raw)
    if key in NUMERIC_ATTRIBUTES:
        allowed(_NUMERIC_OPS, f"attribute {key}")
        if what != "number" or not _INTEGER_RE.fullmatch(str(raw)):
            raise scanner.error(
                f"{key} is milliseconds since the Unix epoch: compare it with an integer", at
            )
        return Comparison(kind, key, op, int(str(raw)))
    allowed(_ATTRIBUTE_STRING_OPS, f"attribute {key}")
    if op in ("IN", "NOT IN") and key != "run_id":
        raise scanner.error(f"only attributes.run_id supports {op} (a list of run ids)", at)
    if what == "number":
        raise scanner.error(
            f"attribute {key} is a string: quote the value, e.g. attributes.{key} {op} '{raw}'",
            at,
        )
    return Comparison(kind, key, op, raw)


def parse_filter(text: str | None) -> tuple[Comparison, ...]:
    """MLflow's filter string -> its comparisons (all must hold). Empty means no filter.

    For example:

        parse_filter("metrics.loss < 0.1 and params.`opt name` = 'adam'")
    """
    if text is None:
        return ()
    if not isinstance(text, str):
        raise InvalidParameterValue("filter_string", text, "must be a string")
    scanner = _Scanner(text, "filter_string")
    out: list[Comparison] = []
    if scanner.at_end():
        return ()
    while True:
        prefix, key, start = scanner.identifier("a comparison")
        if prefix == "" and key.upper() in ("AND", "OR", "NOT"):
            raise scanner.error(f"expected a comparison before {key.upper()}", start)
        kind, key = _resolve(scanner, prefix, key, start, (*STRING_ATTRIBUTES, *NUMERIC_ATTRIBUTES))
        op = _comparator(scanner)
        raw, what = _value(scanner, op)
        out.append(_typed(scanner, kind, key, op, raw, what, start))
        if len(out) > MAX_FILTER_COMPARISONS:
            raise scanner.error(
                f"has more than {MAX_FILTER_COMPARISONS} comparisons (the limit per filter): "
                "split the search, or filter on fewer keys",
                start,
            )
        if scanner.at_end():
            return tuple(out)
        at = scanner.pos
        if scanner.take_word("AND"):
            if scanner.at_end():
                raise scanner.error("expected a comparison after AND")
            continue
        if scanner.take_word("OR"):
            raise scanner.error(
                "OR is not supported (as in MLflow): comparisons can only be joined with "
                "AND; run one search per alternative",
                at,
            )
        found = scanner.text[at : at + 20]
        raise scanner.error(f"expected AND or the end of the filter, found {found!r}", at)


def parse_order_by(clauses: Sequence[str] | None) -> tuple[OrderKey, ...]:
    """MLflow's order_by list, e.g. ["metrics.loss ASC", "params.lr DESC"]."""
    if clauses is None:
        return ()
    out: list[OrderKey] = []
    for index, clause in enumerate(clauses):
        field_name = f"order_by[{index}]"
        if not isinstance(clause, str) or not clause.strip():
            raise InvalidParameterValue(field_name, clause, "must be a non-empty string")
        scanner = _Scanner(clause, field_name)
        prefix, key, start = scanner.identifier("a column to order by")
        kind, key = _resolve(scanner, prefix, key, start, ORDERABLE_ATTRIBUTES)
        ascending = True
        if scanner.take_word("DESC"):
            ascending = False
        else:
            scanner.take_word("ASC")
        if not scanner.at_end():
            raise scanner.error("expected ASC, DESC or the end of the clause")
        out.append(OrderKey(kind, key, ascending))
    return tuple(out)


# -- compiling ---------------------------------------------------------------------------------

# Fixed identifiers only: user keys and values are always parameters.
_SOURCE: dict[Kind, str] = {"metric": "latest_metrics", "param": "params", "tag": "tags"}


class _Params:
    def __init__(self) -> None:
        self.values: dict[str, object] = {}

    def add(self, value: object) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"${name}"


def _condition(term: Comparison, params: _Params) -> str:
    if term.kind == "attribute":
        column = f"r.{term.key}"
        if term.op in ("IN", "NOT IN"):
            assert isinstance(term.value, tuple)
            marks = ", ".join(params.add(item) for item in term.value)
            return f"{column} {term.op} ({marks})"
        return f"{column} {term.op} {params.add(term.value)}"
    source = _SOURCE[term.kind]
    key = params.add(term.key)
    value = params.add(term.value)
    if term.kind == "metric":
        # DuckDB orders NaN above every number; MLflow (Python) compares NaN false except !=.
        test = (
            f"s.value != {value}::DOUBLE"
            if term.op == "!="
            else f"NOT isnan(s.value) AND s.value {term.op} {value}::DOUBLE"
        )
    else:
        test = f"s.value {term.op} {value}"
    return (
        f"EXISTS (SELECT 1 FROM {source} AS s "
        f"WHERE s.run_id = r.run_id AND s.key = {key} AND {test})"
    )


def _where(search: RunSearch, params: _Params) -> list[str]:
    where: list[str] = []
    if search.experiment_ids is not None:
        if not search.experiment_ids:
            where.append("false")
        else:
            marks = ", ".join(params.add(e) for e in search.experiment_ids)
            where.append(f"r.experiment_id IN ({marks})")
    if search.lifecycle_stages is not None:
        marks = ", ".join(params.add(s) for s in search.lifecycle_stages)
        where.append(f"r.lifecycle_stage IN ({marks})")
    where.extend(_condition(term, params) for term in search.filters)
    return where


def _metric_column(key: OrderKey) -> str:
    # A fixed identifier from the dataclass's Literal, never user text.
    return {"value": "value", "min": "min", "max": "max"}[key.column]


def compile_search(search: RunSearch) -> tuple[str, dict[str, object]]:
    """One DuckDB query returning the matching run_ids in order, over tables named runs,
    params, tags and latest_metrics. Order: the order_by keys (values, then NaN, then runs
    missing the key, whatever the direction), then start_time DESC, then run_id (MLflow)."""
    params = _Params()
    joins: list[str] = []
    where = _where(search, params)
    order: list[str] = []
    for index, key in enumerate(search.order_by):
        direction = "ASC" if key.ascending else "DESC"
        if key.kind == "attribute":
            column = f"r.{key.key}"
            order.append(f"({column} IS NULL) ASC, {column} {direction}")
            continue
        alias = f"o{index}"
        source = _SOURCE[key.kind]
        joins.append(
            f"LEFT JOIN {source} AS {alias} ON {alias}.run_id = r.run_id "
            f"AND {alias}.key = {params.add(key.key)}"
        )
        if key.kind == "metric":
            value = f"{alias}.{_metric_column(key)}"
            rank = f"CASE WHEN {value} IS NULL THEN 2 WHEN isnan({value}) THEN 1 ELSE 0 END ASC"
        else:
            value = f"{alias}.value"
            rank = f"({value} IS NULL) ASC"
        order.append(f"{rank}, {value} {direction}")
    order.extend(["r.start_time DESC", "r.run_id ASC"])
    sql = "SELECT r.run_id FROM runs AS r"
    if joins:
        sql += "\n" + "\n".join(joins)
    if where:
        sql += "\nWHERE " + "\n  AND ".join(where)
    sql += "\nORDER BY " + ", ".join(order)
    sql += f"\nLIMIT {params.add(search.limit)} OFFSET {params.add(search.offset)}"
    return sql, params.values


def compile_count(search: RunSearch) -> tuple[str, dict[str, object]]:
    """How many runs ``search`` selects (ignoring its limit and offset): one row, column n."""
    params = _Params()
    where = _where(search, params)
    sql = "SELECT count(*) AS n FROM runs AS r"
    if where:
        sql += "\nWHERE " + "\n  AND ".join(where)
    return sql, params.values


def compile_groups(search: RunSearch, grouping: RunGrouping) -> tuple[str, dict[str, object]]:
    """The groups of ``grouping`` over the runs ``search`` selects: columns value, runs, then
    per metric i ``count_i, mean_i, std_i, min_i, max_i``; ordered by value, null last, at most
    ``grouping.limit`` + 1 rows (one more tells the caller there were more)."""
    if grouping.by.kind not in ("param", "tag"):
        raise InvalidParameterValue("group_by", grouping.by.key, "must be a param or a tag")
    params = _Params()
    where = _where(search, params)
    matched = "SELECT r.run_id FROM runs AS r"
    if where:
        matched += " WHERE " + " AND ".join(where)
    source = _SOURCE[grouping.by.kind]
    joins = [
        f"LEFT JOIN {source} AS g ON g.run_id = m.run_id AND g.key = {params.add(grouping.by.key)}"
    ]
    columns = ["g.value AS value", "count(*) AS runs"]
    for index, metric in enumerate(grouping.metrics):
        alias = f"v{index}"
        joins.append(
            f"LEFT JOIN latest_metrics AS {alias} ON {alias}.run_id = m.run_id "
            f"AND {alias}.key = {params.add(metric.key)}"
        )
        raw = f"{alias}.{_metric_column(metric)}"
        x = f"(CASE WHEN isnan({raw}) THEN NULL ELSE {raw} END)"
        columns += [
            f"count({x}) AS count_{index}",
            f"avg({x}) AS mean_{index}",
            f"stddev_samp({x}) AS std_{index}",
            f"min({x}) AS min_{index}",
            f"max({x}) AS max_{index}",
        ]
    sql = (
        f"WITH m AS ({matched})\nSELECT {', '.join(columns)} FROM m\n"
        + "\n".join(joins)
        + "\nGROUP BY g.value ORDER BY (g.value IS NULL) ASC, g.value ASC"
        + f"\nLIMIT {params.add(grouping.limit + 1)}"
    )
    return sql, params.values
