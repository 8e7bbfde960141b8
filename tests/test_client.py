"""The client against a real server: fluent API, Client reads, errors, ownership, restart."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

import steppe
from tests.conftest import ServerProcess, clean_env, start_server


def test_fluent_run_round_trip(tracking: str) -> None:
    exp = steppe.set_experiment("round-trip")
    with steppe.start_run(run_name="r1", tags={"team": "steppe"}) as run:
        assert steppe.active_run() is run
        assert run.info.status == "RUNNING" and run.info.run_name == "r1"
        steppe.log_param("lr", 0.01)
        steppe.log_params({"layers": 4, "opt": "adam"})
        steppe.set_tag("phase", "test")
        for step in range(1000):
            steppe.log_metric("loss", 1.0 / (step + 1), step=step)
        steppe.log_metric("weird", math.nan, step=0)
        steppe.log_metric("weird", math.inf, step=1)
        steppe.log_metric("weird", -math.inf, step=2)
    assert steppe.active_run() is None

    client = steppe.Client()
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FINISHED" and got.info.end_time is not None
    assert got.info.experiment_id == exp.experiment_id
    assert got.data.params == {"lr": "0.01", "layers": "4", "opt": "adam"}
    assert got.data.tags["team"] == "steppe" and got.data.tags["phase"] == "test"
    assert got.data.tags["mlflow.runName"] == "r1"
    assert got.data.metrics["loss"] == pytest.approx(1.0 / 1000)
    assert got.data.metrics["weird"] == -math.inf  # highest step wins

    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == list(range(1000))
    assert history[10].value == pytest.approx(1.0 / 11)
    weird = client.get_metric_history(run.info.run_id, "weird")
    assert math.isnan(weird[0].value) and weird[1].value == math.inf
    first = history[0]  # decoded from the Arrow answer: plain Python numbers, MLflow names
    assert isinstance(first, steppe.Metric) and first.key == "loss"
    assert (type(first.value), type(first.timestamp), type(first.step)) == (float, int, int)
    assert first == steppe.Metric("loss", first.value, first.timestamp, 0) != history[1]

    runs = client.search_runs([exp.experiment_id])
    assert run.info.run_id in {r.info.run_id for r in runs}
    assert any(e.name == "round-trip" for e in client.search_experiments())


def test_latest_is_highest_step_then_newest_timestamp(tracking: str) -> None:
    with steppe.start_run() as run:
        steppe.log_metric("m", 1.0, step=5, timestamp=1000)
        steppe.log_metric("m", 2.0, step=7, timestamp=500)
        steppe.log_metric("m", 3.0, step=7, timestamp=900)
        steppe.log_metric("m", 4.0, step=6, timestamp=2000)
    assert steppe.get_run(run.info.run_id).data.metrics["m"] == 3.0
    assert len(steppe.Client().get_metric_history(run.info.run_id, "m")) == 4


def test_nested_runs_and_resume(tracking: str) -> None:
    with steppe.start_run() as parent:
        with pytest.raises(steppe.SteppeError, match="already active"):
            steppe.start_run()
        with steppe.start_run(nested=True) as child:
            steppe.log_metric("x", 1.0)
    client = steppe.Client()
    assert client.get_run(child.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    with steppe.start_run(run_id=parent.info.run_id) as resumed:
        assert resumed.info.status == "RUNNING"
        steppe.log_metric("after_resume", 2.0)
    assert client.get_run(parent.info.run_id).data.metrics["after_resume"] == 2.0


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: steppe.log_metric("bad*name", 1.0), "key"),
        (lambda: steppe.log_metric("../escape", 1.0), "key"),
        (lambda: steppe.log_metric("k" * 251, 1.0), "key"),
        (lambda: steppe.log_metric("ok", "high"), "value"),
        (lambda: steppe.log_metric("ok", 1.0, step="one"), "step"),
        (lambda: steppe.log_metric("ok", 1.0, timestamp=-5), "timestamp"),
        (lambda: steppe.log_param("bad|key", 1), "params[0].key"),
        (lambda: steppe.set_tag("", "v"), "tags"),
    ],
)
def test_bad_input_raises_at_the_call_site(tracking: str, call: object, field: str) -> None:
    with steppe.start_run() as run:
        steppe.log_metric("good", 1.0, step=1)
        with pytest.raises(steppe.InvalidParameterValue) as caught:
            call()  # type: ignore[operator]
        assert field in str(caught.value)
        steppe.log_metric("good", 2.0, step=2)
    # Nothing else was lost.
    history = steppe.Client().get_metric_history(run.info.run_id, "good")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 2.0)]


def test_param_relogged_with_another_value_is_rejected(tracking: str) -> None:
    with steppe.start_run() as run:
        steppe.log_param("depth", 3)
        steppe.log_param("depth", 3)  # same value again is fine, as in MLflow
        with pytest.raises(steppe.InvalidParameterValue, match=r"depth.*already logged"):
            steppe.log_param("depth", 5)
        steppe.log_param("width", 8)
    assert steppe.get_run(run.info.run_id).data.params == {"depth": "3", "width": "8"}


def test_long_param_values_are_truncated_like_mlflow(tracking: str) -> None:
    with steppe.start_run() as run:
        steppe.log_param("long", "x" * 7000)
    assert steppe.get_run(run.info.run_id).data.params["long"] == "x" * 6000


def test_unknown_run_ids_are_clear_errors(tracking: str) -> None:
    client = steppe.Client()
    missing = "0" * 32
    with pytest.raises(steppe.ResourceDoesNotExist, match=missing):
        client.get_run(missing)
    with pytest.raises(steppe.ResourceDoesNotExist, match=missing):
        client.log_param(missing, "a", 1)
    with pytest.raises(steppe.ResourceDoesNotExist):
        steppe.start_run(run_id=missing)
    with pytest.raises(steppe.InvalidParameterValue, match="run_id"):
        client.get_run("../../etc/passwd")


def test_second_server_on_the_same_dir_fails_fast(steppe_server: ServerProcess) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "steppe",
            "server",
            "--data-dir",
            str(steppe_server.data_dir),
            "--http-port",
            "0",
            "--grpc-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert done.returncode == 3
    assert f"pid {steppe_server.proc.pid}" in done.stderr
    assert steppe_server.http_url in done.stderr


def test_restart_keeps_everything(tmp_path: object) -> None:
    from pathlib import Path

    data_dir = Path(str(tmp_path)) / "data"
    server = start_server(data_dir)
    try:
        client = steppe.Client(server.http_url)
        run = client.create_run(run_name="persist")
        for step in range(5000):
            client.log_metric(run.info.run_id, "loss", float(step), step=step)
        client.log_param(run.info.run_id, "p", "v")
        client.set_terminated(run.info.run_id)
    finally:
        assert server.stop() == 0
    server = start_server(data_dir)
    try:
        client = steppe.Client(server.http_url)
        got = client.get_run(run.info.run_id)
        assert got.data.params == {"p": "v"} and got.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in history] == list(range(5000))
    finally:
        assert server.stop() == 0


_LOG_ONE = "import steppe\nwith steppe.start_run():\n    steppe.log_metric('m', 1.0)\n"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"STEPPE_TRACKING_URI": "127.0.0.1:6220"}, "did you mean http://127.0.0.1:6220?"),
        ({"STEPPE_TRACKING_URI": "localhost:6220"}, "did you mean http://localhost:6220?"),
        ({"MLFLOW_TRACKING_URI": "file:./mlruns"}, "is an MLflow file store"),
        ({"MLFLOW_TRACKING_URI": "./store"}, "is an MLflow file store"),
    ],
)
def test_tracking_uri_mistakes_are_refused_with_a_hint(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    cwd = tmp_path
    (cwd / "store" / "0").mkdir(parents=True)  # MLflow's layout: <store>/0/meta.yaml
    (cwd / "store" / "0" / "meta.yaml").write_text("name: Default\n")
    done = subprocess.run(
        [sys.executable, "-c", _LOG_ONE],
        cwd=cwd,
        env=clean_env(STEPPE_SPOOL_DIR=str(cwd / "spool"), **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert expected in done.stderr, done.stderr
    assert "tracking_uri" in done.stderr
    # Nothing was created: no folder named after the address, no files in the MLflow store.
    assert sorted(p.name for p in cwd.iterdir()) == ["store"]
    assert sorted(p.name for p in (cwd / "store").iterdir()) == ["0"]


_RESUME = (
    "import steppe\n"
    "with steppe.start_run() as run:\n"
    "    steppe.log_metric('m', 1.0)\n"
    "with steppe.start_run() as second:\n"  # the variable is taken by the first start_run
    "    pass\n"
    "print(run.info.run_id, second.info.run_id)\n"
)


@pytest.mark.parametrize("variable", ["MLFLOW_RUN_ID", "STEPPE_RUN_ID"])
def test_start_run_resumes_the_run_named_by_the_environment(
    steppe_server: ServerProcess, variable: str
) -> None:
    client = steppe.Client(steppe_server.http_url)
    launched = client.create_run().info.run_id  # what `mlflow run` does before the script
    env = clean_env(STEPPE_TRACKING_URI=steppe_server.http_url, **{variable: launched})
    done = subprocess.run(
        [sys.executable, "-c", _RESUME], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.split()
    assert first == launched and second != launched
    run = client.get_run(launched)
    assert run.info.status == "FINISHED" and run.data.metrics == {"m": 1.0}

    env[variable] = "0" * 32  # no such run: an error, as in MLflow
    done = subprocess.run(
        [sys.executable, "-c", _RESUME], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "0" * 32 in done.stderr, done.stderr
