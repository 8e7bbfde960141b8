"""`steppe import neptune`: Parquet in neptune-exporter's layout (its schema, one file per
run part, written here with pyarrow: neptune-exporter itself needs a Neptune account)
arrives with every float-series point, params from single values, tags, names."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import steppe
from steppe.importers.neptune import run_id_for
from tests.conftest import ServerProcess
from tests.importing import steppe_import

# neptune-exporter's row schema (src/neptune_exporter/model.py there)
SCHEMA = pa.schema(
    [
        ("project_id", pa.string()),
        ("run_id", pa.string()),
        ("attribute_path", pa.string()),
        ("attribute_type", pa.string()),
        ("step", pa.decimal128(18, 6)),
        ("timestamp", pa.timestamp("ms", tz="UTC")),
        ("int_value", pa.int64()),
        ("float_value", pa.float64()),
        ("string_value", pa.string()),
        ("bool_value", pa.bool_()),
        ("datetime_value", pa.timestamp("ms", tz="UTC")),
        ("string_set_value", pa.list_(pa.string())),
        ("file_value", pa.struct([("path", pa.string())])),
        (
            "histogram_value",
            pa.struct(
                [
                    ("type", pa.string()),
                    ("edges", pa.list_(pa.float64())),
                    ("values", pa.list_(pa.float64())),
                ]
            ),
        ),
    ]
)
T0 = datetime(2025, 3, 1, tzinfo=timezone.utc)


def _row(project: str, run: str, path: str, kind: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in SCHEMA.names}
    row.update(project_id=project, run_id=run, attribute_path=path, attribute_type=kind)
    row.update(values)
    return row


def _write(root: Path, project: str, run: str, rows: list[dict[str, Any]], parts: int) -> None:
    folder = root / project
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(rows) // parts)
    for n in range(parts):
        chunk = rows[n * size : (n + 1) * size]
        pq.write_table(
            pa.Table.from_pylist(chunk, schema=SCHEMA), folder / f"{run}_part_{n}.parquet"
        )


def test_neptune_exporter_parquet_round_trip(steppe_server: ServerProcess, tmp_path: Path) -> None:
    project = f"org_proj-{uuid.uuid4().hex[:6]}"
    root = tmp_path / "data"
    rows = [
        _row(project, "RUN-1", "sys/name", "string", string_value="baseline"),
        _row(project, "RUN-1", "sys/experiment/name", "string", string_value="sweep"),
        _row(project, "RUN-1", "sys/tags", "string_set", string_set_value=["gpu", "v2"]),
        _row(project, "RUN-1", "sys/creation_time", "datetime", datetime_value=T0),
        _row(project, "RUN-1", "parameters/lr", "float", float_value=0.001),
        _row(project, "RUN-1", "parameters/epochs", "int", int_value=30),
        _row(project, "RUN-1", "parameters/opt", "string", string_value="adam"),
        _row(project, "RUN-1", "parameters/amp", "bool", bool_value=True),
        _row(project, "RUN-1", "source_code/files", "file", file_value={"path": "x.zip"}),
    ]
    want: dict[str, list[tuple[int, int, str]]] = {"train/loss": [], "eval/acc": []}
    for step in range(250):
        stamp = T0.timestamp() * 1000 + step * 10
        when = datetime.fromtimestamp(stamp / 1000, timezone.utc)
        rows.append(
            _row(
                project,
                "RUN-1",
                "train/loss",
                "float_series",
                step=Decimal(step),
                timestamp=when,
                float_value=1 / (step + 1),
            )
        )
        want["train/loss"].append((step, int(stamp), repr(1 / (step + 1))))
        if step % 5 == 0:
            rows.append(
                _row(
                    project,
                    "RUN-1",
                    "eval/acc",
                    "float_series",
                    step=Decimal(step),
                    timestamp=when,
                    float_value=step / 250,
                )
            )
            want["eval/acc"].append((step, int(stamp), repr(step / 250)))
    _write(root, project, "RUN-1", rows, parts=3)
    half = [
        _row(
            project,
            "RUN-2",
            "m",
            "float_series",
            step=Decimal("0.5") * i,
            timestamp=T0,
            float_value=float(i),
        )
        for i in range(10)
    ]
    _write(root, project, "RUN-2", half, parts=1)

    report_file = tmp_path / "report.json"
    done = steppe_import(
        "neptune", str(root), "--report", str(report_file), uri=steppe_server.http_url
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert report["ok"], report["differences"]
    assert report["points"]["in_steppe"] == report["points"]["source"] == 250 + 50 + 10
    client = steppe.Client(steppe_server.http_url)
    run = client.get_run(run_id_for(project, "RUN-1"))
    assert run.info.run_name == "baseline"
    assert client.get_experiment(run.info.experiment_id).name == f"{project}/sweep"
    assert run.info.start_time == int(T0.timestamp() * 1000)
    assert run.data.params == {
        "parameters/lr": "0.001",
        "parameters/epochs": "30",
        "parameters/opt": "adam",
        "parameters/amp": "True",
    }
    assert run.data.tags["neptune.tag.gpu"] == "true" and run.data.tags["neptune.run_id"] == "RUN-1"
    for key, points in want.items():
        got = sorted(
            (m.step, m.timestamp, repr(m.value))
            for m in client.get_metric_history(run.info.run_id, key)
        )
        assert got == points, key
    # fractional steps are scaled to integers, and the report says by how much
    other = client.get_run(run_id_for(project, "RUN-2"))
    assert other.data.tags["neptune.step_multiplier"] == "10"
    steps = sorted(m.step for m in client.get_metric_history(other.info.run_id, "m"))
    assert steps == [5 * i for i in range(10)]
    notes = "\n".join(report["differences"])
    assert "1 file value(s) not imported" in notes and "multiplied by 10" in notes
