"""The read APIs end to end against a real ``steppe server``: Client.sql, Client.search_runs,
steppe.search_runs (pandas), and the ``steppe sql`` command through a server and on a data
dir that no server owns."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import steppe
from steppe.lock import live_owner
from tests.conftest import ServerProcess, clean_env, start_server


@pytest.fixture(autouse=True)
def restore_active_experiment(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests set active experiments (on several servers): undo that afterwards."""
    import steppe.fluent

    monkeypatch.setattr(steppe.fluent, "_experiment_id", steppe.fluent._experiment_id)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def log_runs(name: str) -> dict[str, str]:
    """Three finished runs in a new experiment; returns run name -> run id."""
    steppe.set_experiment(name)
    ids = {}
    for run_name, lr, losses in [
        ("fast", "0.1", [1.0, 0.5, 0.05]),
        ("slow", "0.01", [1.0, 0.9, 0.8, 0.7]),
        ("nan", "0.5", [1.0, math.nan]),
    ]:
        with steppe.start_run(run_name=run_name, tags={"team": "red"}) as run:
            steppe.log_param("lr", lr)
            for step, loss in enumerate(losses):
                steppe.log_metric("loss", loss, step=step)
            if run_name != "nan":
                steppe.log_metric("acc", 1 - losses[-1], step=len(losses) - 1)
        ids[run_name] = run.info.run_id
    with steppe.start_run(run_name="bare") as run:
        pass
    ids["bare"] = run.info.run_id
    return ids


def test_client_sql_and_search(tracking: str) -> None:
    name = unique("query-e2e")
    ids = log_runs(name)
    client = steppe.Client()
    exp = client.get_experiment_by_name(name)
    assert exp is not None
    table = client.sql(
        "SELECT r.run_name, min(m.step) AS first_step FROM metrics m JOIN runs r USING (run_id) "
        f"WHERE r.experiment_id = '{exp.experiment_id}' AND m.key = 'loss' AND m.value < 0.6 "
        "GROUP BY r.run_name ORDER BY first_step"
    )
    assert isinstance(table, pa.Table)
    assert table.to_pylist() == [{"run_name": "fast", "first_step": 1}]
    frame = client.sql("SELECT count(*) AS n FROM runs").to_pandas()
    assert int(frame["n"][0]) >= 4

    found = client.search_runs([exp.experiment_id], "metrics.loss < 0.9", order_by=["metrics.loss"])
    assert [r.info.run_id for r in found] == [ids["fast"], ids["slow"]]
    assert found[0].data.params == {"lr": "0.1"} and found[0].data.metrics["loss"] == 0.05
    by_lr = client.search_runs([exp.experiment_id], order_by=["params.lr DESC"])
    assert [r.info.run_name for r in by_lr] == ["nan", "fast", "slow", "bare"]
    named = client.search_runs(
        [exp.experiment_id], "tags.team = 'red' and attributes.run_name LIKE '%a%'"
    )
    assert {r.info.run_name for r in named} == {"fast", "nan"}

    with pytest.raises(steppe.InvalidParameterValue, match="OR is not supported"):
        client.search_runs([exp.experiment_id], "metrics.loss < 1 OR metrics.acc > 0")
    with pytest.raises(steppe.InvalidParameterValue, match="read_csv"):
        client.sql("SELECT * FROM read_csv('/etc/passwd')")
    with pytest.raises(steppe.InvalidParameterValue, match="max_rows=1"):
        client.sql("SELECT * FROM runs", max_rows=1)


def test_search_runs_pages(tracking: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import steppe.search

    name = unique("paging")
    ids = log_runs(name)
    monkeypatch.setattr(steppe.search, "_PAGE_SIZE", 2)
    client = steppe.Client()
    exp = client.get_experiment_by_name(name)
    assert exp is not None
    everything = client.search_runs([exp.experiment_id], order_by=["attributes.run_name"])
    assert [r.info.run_name for r in everything] == ["bare", "fast", "nan", "slow"]
    three = client.search_runs([exp.experiment_id], max_results=3, order_by=["run_name"])
    assert [r.info.run_id for r in three] == [ids["bare"], ids["fast"], ids["nan"]]


def test_search_runs_dataframe(tracking: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    name = unique("frame")
    ids = log_runs(name)  # also makes the experiment active
    frame = steppe.search_runs(order_by=["metrics.loss DESC"])
    assert list(frame.columns[:6]) == [
        "run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time",
    ]  # fmt: skip
    assert list(frame["run_id"]) == [ids["slow"], ids["fast"], ids["nan"], ids["bare"]]
    assert {"metrics.loss", "metrics.acc", "params.lr", "tags.team", "tags.mlflow.runName"} <= set(
        frame.columns
    )
    assert str(frame["start_time"].dtype).startswith("datetime64") and "UTC" in str(
        frame["start_time"].dtype
    )
    assert (frame["status"] == "FINISHED").all() and not frame["end_time"].isna().any()
    assert frame["start_time"].iloc[0] == pd.Timestamp(
        steppe.get_run(ids["slow"]).info.start_time, unit="ms", tz="UTC"
    )
    row = frame.set_index("run_id")
    assert math.isnan(row.loc[ids["nan"], "metrics.loss"])  # its latest value is NaN
    assert math.isnan(row.loc[ids["bare"], "metrics.loss"])  # no such metric
    assert row.loc[ids["bare"], "params.lr"] is None
    assert row.loc[ids["fast"], "tags.mlflow.runName"] == "fast"
    assert row.loc[ids["fast"], "metrics.acc"] == pytest.approx(0.95)

    by_name = steppe.search_runs(experiment_names=[name, "no-such-experiment"])
    assert set(by_name["run_id"]) == set(ids.values())
    listed = steppe.search_runs(filter_string="params.lr = '0.1'", output_format="list")
    assert [r.info.run_id for r in listed] == [ids["fast"]]
    empty = steppe.search_runs(filter_string="params.lr = 'none'")
    assert empty.empty and list(empty.columns) == list(frame.columns[:6])
    every = steppe.search_runs(search_all_experiments=True, max_results=10_000)
    assert set(ids.values()) <= set(every["run_id"])
    with pytest.raises(steppe.InvalidParameterValue, match="not both"):
        steppe.search_runs(experiment_ids=["0"], experiment_names=[name])
    with pytest.raises(steppe.InvalidParameterValue, match="metrics compare with numbers"):
        steppe.search_runs(filter_string="metrics.loss < 'x'")

    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        steppe.search_runs()
    assert len(steppe.search_runs(output_format="list")) == 4


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "steppe", "sql", *args],
        capture_output=True,
        env=env,
        timeout=90,
        check=False,
    )


def test_cli_through_the_tracking_server(tracking: str, tmp_path: Path) -> None:
    name = unique("cli")
    log_runs(name)
    env = clean_env(STEPPE_TRACKING_URI=tracking)
    query = (
        "SELECT r.run_name, p.value AS lr FROM runs r JOIN experiments e USING (experiment_id) "
        f"JOIN params p USING (run_id) WHERE e.name = '{name}' ORDER BY lr"
    )
    table = run_cli(query, env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.decode().splitlines()
    assert lines[0].split() == ["run_name", "|", "lr"] and lines[-1] == "(3 rows)"
    assert [line.split()[0] for line in lines[2:-1]] == ["slow", "fast", "nan"]

    csv = run_cli(query, "--format", "csv", env=env)
    assert csv.stdout.decode().splitlines() == [
        '"run_name","lr"', '"slow","0.01"', '"fast","0.1"', '"nan","0.5"',
    ]  # fmt: skip
    as_json = run_cli(
        f"SELECT max(value) AS worst FROM metrics m JOIN runs r USING (run_id) "
        f"JOIN experiments e USING (experiment_id) WHERE e.name = '{name}'",
        "--format",
        "json",
        env=env,
    )
    assert json.loads(as_json.stdout) == [{"worst": "NaN"}]  # DuckDB: NaN is the largest
    out = tmp_path / "result.parquet"
    parquet = run_cli(query, "--format", "parquet", "--output", str(out), env=env)
    assert parquet.returncode == 0 and parquet.stdout == b""
    assert pq.read_table(out).column("run_name").to_pylist() == ["slow", "fast", "nan"]
    to_stdout = run_cli(query, "--format", "parquet", env=env)
    assert pq.read_table(io.BytesIO(to_stdout.stdout)).num_rows == 3

    refused = run_cli("COPY runs TO '/tmp/x.csv'", env=env)
    assert refused.returncode == 1 and b"only SELECT" in refused.stderr
    too_many = run_cli("SELECT * FROM range(5)", "--max-rows", "2", env=env)
    assert too_many.returncode == 1 and b"max_rows=2" in too_many.stderr


def test_cli_reads_a_data_dir_no_server_owns(tmp_path: Path) -> None:
    data_dir = tmp_path / "steppe-data"
    server: ServerProcess = start_server(data_dir)
    try:
        steppe.set_tracking_uri(server.http_url)
        ids = log_runs("offline")
    finally:
        steppe.set_tracking_uri(None)
        assert server.stop() == 0, "".join(server.output)
    assert live_owner(data_dir) == (False, None)
    catalog = data_dir / "catalog.sqlite"
    before = catalog.read_bytes()

    env = clean_env()
    result = run_cli(
        "SELECT r.run_name, count(*) AS points FROM metrics m JOIN runs r USING (run_id) "
        "GROUP BY ALL ORDER BY 1",
        "--data-dir",
        str(data_dir),
        "--format",
        "json",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"run_name": "fast", "points": 4},
        {"run_name": "nan", "points": 2},
        {"run_name": "slow", "points": 5},
    ]
    latest = run_cli(
        f"SELECT value FROM latest_metrics WHERE run_id = '{ids['fast']}' AND key = 'loss'",
        "--format",
        "csv",
        env=clean_env(STEPPE_DATA_DIR=str(data_dir)),
    )
    assert latest.stdout.decode().splitlines() == ['"value"', "0.05"]
    # Read directly: no server was started, and the catalog is as the server left it.
    assert live_owner(data_dir) == (False, None)
    assert catalog.read_bytes() == before
    missing = run_cli("SELECT 1", "--data-dir", str(tmp_path / "nothing"), env=env)
    assert missing.returncode == 1 and b"no steppe data dir" in missing.stderr


def test_a_server_owning_the_data_dir_is_asked_over_http(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import steppe.sql

    def no_direct_read(*args: object) -> None:
        raise AssertionError("read the folder although a server owns it")

    monkeypatch.setattr(steppe.sql, "_run_in_process", no_direct_read)
    data_dir = tmp_path / "owned"
    server = start_server(data_dir)
    try:
        steppe.set_tracking_uri(server.http_url)
        with steppe.start_run(experiment_id="0"):
            for step in range(7):
                steppe.log_metric("m", float(step), step=step)
        table = steppe.sql.query_data_dir(data_dir, "SELECT count(*) AS n FROM metrics")
        assert table.to_pylist() == [{"n": 7}]  # acked points still in the server's tail
    finally:
        steppe.set_tracking_uri(None)
        assert server.stop() == 0, "".join(server.output)
