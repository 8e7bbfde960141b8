"""Reads neptune-exporter's Parquet output (``neptune-exporter export --data-path DIR``):
``DIR/<project>/<run>_part_<n>.parquet``, one row per attribute value with the columns
project_id, run_id, attribute_path, attribute_type, step (decimal), timestamp (ms, UTC) and
one value column per type (int_value, float_value, string_value, bool_value,
datetime_value, string_set_value, file_value, histogram_value).

The layout is the one neptune-exporter's own writer and loaders use (its pyarrow schema);
it was not produced here by neptune-exporter itself, which needs a Neptune account. What
steppe takes: ``float_series`` as metric points, single values (float, int, string, bool,
datetime, string_set) as params, ``sys/tags`` as tags, ``sys/name`` as the run name and
``sys/experiment/name`` as the experiment; files, string and histogram series are listed
in the report, not imported.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from steppe.importers.records import (
    ExperimentRecord,
    Piece,
    RegisteredModelRecord,
    RunRecord,
)

_PARAM_TYPES = {"float", "int", "string", "bool", "datetime", "string_set"}
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")
_PART = re.compile(r"(.+)_part_(\d+)\.parquet")


def run_id_for(project_id: str, run_id: str) -> str:
    """A steppe run id per Neptune run (Neptune ids repeat across projects)."""
    return hashlib.sha256(f"neptune\0{project_id}\0{run_id}".encode()).hexdigest()[:32]


def _value(row: dict[str, Any]) -> str | None:
    kind = row["attribute_type"]
    if kind == "string_set":
        items = row.get("string_set_value")
        return ",".join(sorted(items)) if items is not None else None
    column = {
        "float": "float_value",
        "int": "int_value",
        "string": "string_value",
        "bool": "bool_value",
        "datetime": "datetime_value",
    }[kind]
    value = row.get(column)
    if value is None:
        return None
    if kind == "datetime":
        return str(value.isoformat())
    return str(value)


class NeptuneSource:
    """A neptune-exporter data folder.

    Example::

        source = NeptuneSource(Path("exports/data"))
    """

    kind = "neptune"

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.location = str(self.root)
        self._problems: list[str] = []
        self._files: dict[str, list[Path]] = {}  # steppe run id -> its part files
        self._runs: dict[str, RunRecord] = {}
        self._census: dict[tuple[str, str], int] = {}
        self._multiplier: dict[str, int] = {}
        self._renamed: dict[str, str] = {}

    def _scan(self) -> None:
        if self._files:
            return
        for project in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for path in sorted(project.glob("*_part_*.parquet")):
                match = _PART.fullmatch(path.name)
                if match is None:
                    continue
                self._files.setdefault(f"{project.name}\0{match.group(1)}", []).append(path)
        for parts in self._files.values():
            parts.sort(key=lambda p: int(_PART.fullmatch(p.name).group(2)))  # type: ignore[union-attr]

    def _read_meta(self) -> None:
        """One pass over every part, without the series values: params, tags, names, the
        points per key, and each run's step multiplier."""
        import pyarrow.parquet as pq

        self._scan()
        skipped: dict[str, int] = {}
        for parts in self._files.values():
            record: RunRecord | None = None
            decimals = 0
            for path in parts:
                table = pq.read_table(path)
                meta = table.filter(_not_series(table)).to_pylist()
                for row in meta:
                    if record is None:
                        record = self._record(row)
                    self._meta_row(record, row)
                series = table.filter(_series(table))
                if series.num_rows:
                    if record is None:
                        record = self._record(series.slice(0, 1).to_pylist()[0])
                    for key, count in _counts(series).items():
                        k = (record.run_id, self._key(key))
                        self._census[k] = self._census.get(k, 0) + count
                    decimals = max(decimals, _decimals(series))
                for kind, count in _other_types(table).items():
                    skipped[kind] = skipped.get(kind, 0) + count
            if record is not None:
                self._runs[record.run_id] = record
                self._multiplier[record.run_id] = 10**decimals
                if decimals:
                    record.tags["neptune.step_multiplier"] = str(10**decimals)
                    self._problems.append(
                        f"run {record.tags['neptune.run_id']}: fractional Neptune steps, "
                        f"imported multiplied by {10**decimals}"
                    )
        for kind, count in sorted(skipped.items()):
            self._problems.append(f"{count} {kind} value(s) not imported (not a scalar series)")

    def _record(self, row: dict[str, Any]) -> RunRecord:
        project, run = row["project_id"], row["run_id"]
        return RunRecord(
            run_id=run_id_for(project, run),
            experiment_id=project,
            run_name=run,
            status="FINISHED",
            tags={"neptune.project": project, "neptune.run_id": run},
        )

    def _meta_row(self, record: RunRecord, row: dict[str, Any]) -> None:
        path, kind = row["attribute_path"], row["attribute_type"]
        value = _value(row) if kind in _PARAM_TYPES else None
        if value is None:
            return
        if path == "sys/name" and value:
            record.run_name = value
        elif path == "sys/experiment/name" and value:
            record.experiment_id = f"{row['project_id']}\0{value}"
        elif path == "sys/tags":
            for tag in row.get("string_set_value") or []:
                record.tags[f"neptune.tag.{self._key(tag)}"] = "true"
        elif path == "sys/creation_time" and row.get("datetime_value") is not None:
            record.start_time = int(row["datetime_value"].timestamp() * 1000)
        elif not path.startswith("sys/"):
            record.params[self._key(path)] = value

    def _key(self, path: str) -> str:
        key = self._renamed.get(path)
        if key is None:
            key = _BAD_KEY_CHARS.sub("_", path).strip("/").replace("..", "__")[:250] or "_"
            self._renamed[path] = key
            if key != path:
                self._problems.append(f"attribute {path!r} imported as key {key!r}")
        return key

    def experiments(self) -> list[ExperimentRecord]:
        if not self._runs:
            self._read_meta()
        names = {r.experiment_id for r in self._runs.values()}
        return [ExperimentRecord(e, e.replace("\0", "/"), {}, "active") for e in sorted(names)]

    def runs(self) -> list[RunRecord]:
        if not self._runs:
            self._read_meta()
        return sorted(self._runs.values(), key=lambda r: r.run_id)

    def census(self) -> dict[tuple[str, str], int]:
        if not self._runs:
            self._read_meta()
        return dict(self._census)

    def points(self, run_ids: set[str]) -> Iterator[Piece]:
        import pyarrow.parquet as pq

        self._scan()
        for name in sorted(self._files):
            project, run = name.split("\0", 1)
            run_id = run_id_for(project, run)
            if run_id not in run_ids:
                continue
            scale = Decimal(self._multiplier.get(run_id, 1))
            for path in self._files[name]:
                table = pq.read_table(
                    path,
                    columns=[
                        "attribute_path",
                        "attribute_type",
                        "step",
                        "timestamp",
                        "float_value",
                    ],
                )
                series = table.filter(_series(table))
                if not series.num_rows:
                    continue
                stamps = series.column("timestamp").cast("int64").to_pylist()
                steps = series.column("step").to_pylist()
                yield Piece(
                    run_id,
                    [self._key(k) for k in series.column("attribute_path").to_pylist()],
                    [int(s * scale) if s is not None else 0 for s in steps],
                    [t if t is not None else 0 for t in stamps],
                    [
                        v if v is not None else float("nan")
                        for v in series.column("float_value").to_pylist()
                    ],
                )

    def registered_models(self) -> list[RegisteredModelRecord]:
        return []

    def problems(self) -> list[str]:
        return list(self._problems)


def _series(table: Any) -> Any:
    import pyarrow.compute as pc

    return pc.equal(table.column("attribute_type"), "float_series")


def _not_series(table: Any) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.is_in(table.column("attribute_type"), pa.array(sorted(_PARAM_TYPES)))


def _counts(series: Any) -> dict[str, int]:
    import pyarrow.compute as pc

    return {
        row["values"]: int(row["counts"])
        for row in pc.value_counts(series.column("attribute_path")).to_pylist()
    }


def _other_types(table: Any) -> dict[str, int]:
    import pyarrow.compute as pc

    out = {}
    for row in pc.value_counts(table.column("attribute_type")).to_pylist():
        if row["values"] not in _PARAM_TYPES and row["values"] != "float_series":
            out[row["values"]] = int(row["counts"])
    return out


def _decimals(series: Any) -> int:
    """How many decimal places the steps use (0 when they are all whole numbers)."""
    places = 0
    for step in series.column("step").to_pylist():
        if step is None or step == step.to_integral_value():
            continue
        exponent = step.normalize().as_tuple().exponent
        places = max(places, -int(exponent) if isinstance(exponent, int) else 0)
    return min(places, 6)
