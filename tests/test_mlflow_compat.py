"""The real ``mlflow`` client (and raw HTTP) against a real steppe server: MLflow's tracking REST
API, its semantics and limits, and one data model behind both doors (mlflow <-> steppe)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException

import steppe
from tests.conftest import ServerProcess, clean_env, start_server, wait_until

NAN, INF = math.nan, math.inf


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def steppe_server(catalog_server: ServerProcess) -> ServerProcess:
    """This module runs on every catalog backend (SQLite, PostgreSQL: tests/conftest.py)."""
    return catalog_server


@pytest.fixture
def mlflow_uri(steppe_server: ServerProcess) -> Iterator[str]:
    """The mlflow client pointed at the session's steppe server; ends runs a test left open."""
    mlflow.set_tracking_uri(steppe_server.http_url)
    yield steppe_server.http_url
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def _experiment(client: Any, prefix: str) -> str:
    return str(client.create_experiment(f"{prefix}-{uuid.uuid4().hex[:8]}"))


@dataclass
class Answer:
    status: int
    body: Any


def call(base: str, method: str, path: str, body: Any = None, **query: Any) -> Answer:
    """One raw HTTP request to the server (no mlflow client in between)."""
    url = base.rstrip("/") + path
    if query:
        url += "?" + urllib.parse.urlencode(query, doseq=True)
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Answer(response.status, json.loads(response.read() or b"{}"))
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, json.loads(exc.read() or b"{}"))


def mlflow_error(exc: pytest.ExceptionInfo[MlflowException]) -> str:
    return str(exc.value.error_code)


# -- the user's example -------------------------------------------------------------------

EXAMPLE = """
import mlflow

with mlflow.start_run():
    mlflow.log_param("learning_rate", 0.01)
    mlflow.log_param("n_estimators", 100)
    mlflow.log_metric("accuracy", 0.8)
    print(f"Run ID: {mlflow.active_run().info.run_id}")
"""


def test_the_users_example_runs_with_plain_import_mlflow(steppe_server: ServerProcess) -> None:
    done = subprocess.run(
        [sys.executable, "-c", EXAMPLE],
        env=clean_env(MLFLOW_TRACKING_URI=steppe_server.http_url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split("Run ID: ")[1].split()[0]

    # Stored by steppe, read back through steppe's own client, JSON API and SQL.
    run = steppe.Client(steppe_server.http_url).get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.experiment_id == "0"
    assert run.data.params == {"learning_rate": "0.01", "n_estimators": "100"}
    assert run.data.metrics == {"accuracy": 0.8}
    assert run.info.artifact_uri == f"mlflow-artifacts:/0/{run_id}/artifacts"
    rows = (
        steppe.Client(steppe_server.http_url)
        .sql(f"SELECT key, value, step FROM metrics WHERE run_id = '{run_id}'")
        .to_pylist()
    )
    assert rows == [{"key": "accuracy", "value": 0.8, "step": 0}]


# -- experiments --------------------------------------------------------------------------


def test_experiments_through_the_mlflow_client(mlflow_uri: str) -> None:
    client = mlflow.MlflowClient()
    name = f"exp-{uuid.uuid4().hex[:8]}"
    exp_id = client.create_experiment(name, tags={"team": "vision", "stage": "dev"})
    exp = client.get_experiment(exp_id)
    assert (exp.name, exp.lifecycle_stage, exp.tags) == (
        name,
        "active",
        {"team": "vision", "stage": "dev"},
    )
    assert exp.artifact_location == f"mlflow-artifacts:/{exp_id}"
    assert exp.creation_time and exp.last_update_time
    assert client.get_experiment_by_name(name).experiment_id == exp_id
    assert client.get_experiment_by_name(f"no-such-{name}") is None

    with pytest.raises(MlflowException) as taken:
        client.create_experiment(name)
    assert mlflow_error(taken) == "RESOURCE_ALREADY_EXISTS"
    with pytest.raises(MlflowException) as missing:
        client.get_experiment("987654321")
    assert mlflow_error(missing) == "RESOURCE_DOES_NOT_EXIST"

    client.set_experiment_tag(exp_id, "stage", "prod")
    client.delete_experiment_tag(exp_id, "team")
    assert client.get_experiment(exp_id).tags == {"stage": "prod"}
    with pytest.raises(MlflowException) as no_tag:
        client.delete_experiment_tag(exp_id, "team")
    assert mlflow_error(no_tag) == "RESOURCE_DOES_NOT_EXIST"

    client.rename_experiment(exp_id, name + "-renamed")
    assert client.get_experiment(exp_id).name == name + "-renamed"

    found = client.search_experiments(filter_string=f"name = '{name}-renamed'")
    assert [e.experiment_id for e in found] == [exp_id]
    found = client.search_experiments(filter_string="tags.stage = 'prod' and name LIKE 'exp-%'")
    assert exp_id in [e.experiment_id for e in found]

    run = client.create_run(exp_id)
    client.delete_experiment(exp_id)
    assert client.get_experiment(exp_id).lifecycle_stage == "deleted"
    assert client.get_run(run.info.run_id).info.lifecycle_stage == "deleted"
    active = [e.experiment_id for e in client.search_experiments()]
    deleted = [e.experiment_id for e in client.search_experiments(view_type=ViewType.DELETED_ONLY)]
    assert exp_id not in active and exp_id in deleted
    with pytest.raises(MlflowException) as on_deleted:
        client.create_run(exp_id)
    assert mlflow_error(on_deleted) == "INVALID_PARAMETER_VALUE"

    client.restore_experiment(exp_id)
    assert client.get_experiment(exp_id).lifecycle_stage == "active"
    assert client.get_run(run.info.run_id).info.lifecycle_stage == "active"


def test_set_experiment_creates_by_name_and_search_experiments_orders_and_pages(
    mlflow_uri: str,
) -> None:
    prefix = f"page-{uuid.uuid4().hex[:6]}"
    ids = [mlflow.set_experiment(f"{prefix}-{i}").experiment_id for i in range(5)]
    assert mlflow.set_experiment(f"{prefix}-0").experiment_id == ids[0]  # get, not create
    client = mlflow.MlflowClient()
    flt = f"name LIKE '{prefix}-%'"
    newest_first = client.search_experiments(filter_string=flt)
    assert [e.experiment_id for e in newest_first] == ids[::-1]  # creation_time DESC, id
    by_name = client.search_experiments(filter_string=flt, order_by=["name DESC"])
    assert [e.name for e in by_name] == [f"{prefix}-{i}" for i in range(4, -1, -1)]
    page = client.search_experiments(filter_string=flt, max_results=2, order_by=["name"])
    seen = [e.name for e in page]
    while page.token:
        page = client.search_experiments(
            filter_string=flt, max_results=2, order_by=["name"], page_token=page.token
        )
        seen += [e.name for e in page]
    assert seen == [f"{prefix}-{i}" for i in range(5)]


# -- runs ---------------------------------------------------------------------------------


def test_run_lifecycle_params_tags_and_inputs_through_the_mlflow_client(mlflow_uri: str) -> None:
    client = mlflow.MlflowClient()
    exp_id = _experiment(client, "runs")
    run = client.create_run(exp_id, run_name="first", tags={"team": "a"})
    run_id = run.info.run_id
    assert run.info.status == "RUNNING" and run.info.run_name == "first"
    assert run.data.tags["mlflow.runName"] == "first" and run.data.tags["team"] == "a"

    client.log_param(run_id, "lr", 0.01)
    client.log_param(run_id, "lr", 0.01)  # the same value again is fine
    with pytest.raises(MlflowException) as changed:
        client.log_param(run_id, "lr", 0.02)
    assert mlflow_error(changed) == "INVALID_PARAMETER_VALUE"
    client.set_tag(run_id, "phase", "train")
    client.set_tag(run_id, "mlflow.runName", "renamed")
    client.delete_tag(run_id, "team")
    with pytest.raises(MlflowException) as no_tag:
        client.delete_tag(run_id, "team")
    assert mlflow_error(no_tag) == "RESOURCE_DOES_NOT_EXIST"
    client.log_batch(
        run_id,
        metrics=[Metric("m", 1.5, 1000, 3)],
        params=[Param("layers", "4")],
        tags=[RunTag("k", "v")],
    )
    dataset = Dataset("train", "abc123", "local", '{"uri": "/data/train.csv"}', '{"a": 1}')
    client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "train")])])

    got = client.get_run(run_id)
    assert got.info.run_name == "renamed"
    assert got.data.params == {"lr": "0.01", "layers": "4"}
    assert {k: v for k, v in got.data.tags.items() if not k.startswith("mlflow.")} == {
        "phase": "train",
        "k": "v",
    }
    assert got.data.metrics == {"m": 1.5}
    [used] = got.inputs.dataset_inputs
    assert (used.dataset.name, used.dataset.digest, used.dataset.schema) == (
        "train",
        "abc123",
        '{"a": 1}',
    )
    assert [(t.key, t.value) for t in used.tags] == [("mlflow.data.context", "train")]

    client.set_terminated(run_id, "KILLED", end_time=123456)
    info = client.get_run(run_id).info
    assert (info.status, info.end_time) == ("KILLED", 123456)
    client.update_run(run_id, name="final")
    assert client.get_run(run_id).info.run_name == "final"

    client.delete_run(run_id)
    assert client.get_run(run_id).info.lifecycle_stage == "deleted"
    with pytest.raises(MlflowException) as on_deleted:
        client.log_metric(run_id, "m", 2.0)
    assert mlflow_error(on_deleted) == "INVALID_PARAMETER_VALUE"
    client.restore_run(run_id)
    client.log_metric(run_id, "m", 2.0, step=4)
    assert client.get_run(run_id).data.metrics == {"m": 2.0}

    with pytest.raises(MlflowException) as unknown:
        client.get_run(uuid.uuid4().hex)
    assert mlflow_error(unknown) == "RESOURCE_DOES_NOT_EXIST"


def test_latest_metric_history_order_nan_and_infinity(mlflow_uri: str) -> None:
    client = mlflow.MlflowClient()
    run_id = client.create_run(_experiment(client, "latest")).info.run_id
    # (value, timestamp, step), logged in this order.
    logged = [(0.9, 5000, 0), (0.5, 1000, 1), (0.7, 2000, 3), (0.2, 2001, 3), (9.0, 9000, 2)]
    for value, ts, step in logged:
        client.log_metric(run_id, "loss", value, timestamp=ts, step=step)
    client.log_batch(
        run_id,
        metrics=[Metric("odd", NAN, 10, 0), Metric("odd", INF, 11, 1), Metric("odd", -INF, 12, 2)],
    )

    data = client.get_run(run_id).data
    assert data.metrics["loss"] == 0.2  # highest step (3), then newest timestamp
    assert data.metrics["odd"] == -INF
    history = client.get_metric_history(run_id, "loss")
    # MLflow returns a history ordered by timestamp, then step, then value.
    assert [(m.value, m.timestamp, m.step) for m in history] == sorted(
        logged, key=lambda p: (p[1], p[2], p[0])
    )
    odd = client.get_metric_history(run_id, "odd")
    assert math.isnan(odd[0].value) and odd[1].value == INF and odd[2].value == -INF

    # The same points through steppe: one data model behind both doors.
    mine = steppe.Client(mlflow_uri).get_metric_history(run_id, "loss")
    assert sorted((m.value, m.timestamp, m.step) for m in mine) == sorted(logged)
    assert steppe.Client(mlflow_uri).get_run(run_id).data.metrics["loss"] == 0.2


def test_metric_history_pages_and_bulk_interval_over_raw_http(mlflow_uri: str) -> None:
    client = mlflow.MlflowClient()
    exp_id = _experiment(client, "history")
    run_a = client.create_run(exp_id).info.run_id
    run_b = client.create_run(exp_id).info.run_id
    for run_id, count in ((run_a, 2500), (run_b, 10)):
        for start in range(0, count, 1000):
            client.log_batch(
                run_id,
                metrics=[
                    Metric("x", float(s), 10_000 + s, s)
                    for s in range(start, min(count, start + 1000))
                ],
            )
    assert len(client.get_metric_history(run_a, "x")) == 2500

    seen, token = [], None
    while True:
        query: dict[str, Any] = {"run_id": run_a, "metric_key": "x", "max_results": 1000}
        if token:
            query["page_token"] = token
        answer = call(mlflow_uri, "GET", "/api/2.0/mlflow/metrics/get-history", **query)
        assert answer.status == 200
        seen += [m["step"] for m in answer.body["metrics"]]
        token = answer.body.get("next_page_token")
        if not token:
            break
    assert seen == list(range(2500))

    bulk = call(
        mlflow_uri,
        "GET",
        "/api/2.0/mlflow/metrics/get-history-bulk-interval",
        run_ids=[run_a, run_b],
        metric_key="x",
        max_results=100,
    )
    assert bulk.status == 200
    steps_a = [m["step"] for m in bulk.body["metrics"] if m["run_id"] == run_a]
    steps_b = [m["step"] for m in bulk.body["metrics"] if m["run_id"] == run_b]
    assert len(steps_a) == 100 and steps_a[0] == 0 and steps_a[-1] == 2499
    assert steps_a == sorted(steps_a) and steps_b == list(range(10))
    window = call(
        mlflow_uri,
        "GET",
        "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval",
        run_ids=run_a,
        metric_key="x",
        start_step=100,
        end_step=199,
        max_results=1000,
    )
    assert [m["step"] for m in window.body["metrics"]] == list(range(100, 200))
    one_sided = call(
        mlflow_uri,
        "GET",
        "/api/2.0/mlflow/metrics/get-history-bulk-interval",
        run_ids=run_a,
        metric_key="x",
        start_step=5,
    )
    assert (one_sided.status, one_sided.body["error_code"]) == (400, "INVALID_PARAMETER_VALUE")


# -- search -------------------------------------------------------------------------------


@dataclass
class SearchFixture:
    uri: str
    experiment_id: str
    ids: dict[str, str]  # run name -> run id


#: The runs every search below runs over: name -> loss points (value, timestamp, step), acc,
#: params, tags, status; r7 is deleted. Latest loss: r1 0.5 (highest step, though older),
#: r2 0.2 (same step, newer), r3 NaN, r4 none, r5 0.2, r6 +inf.
SEARCH_RUNS: dict[str, dict[str, Any]] = {
    "r1": {
        "m": [(0.9, 5000, 0), (0.5, 1000, 1)],
        "acc": 0.7,
        "p": {"opt": "adam", "lr": "0.01"},
        "t": {"team": "a"},
    },
    "r2": {
        "m": [(0.7, 2000, 3), (0.2, 2001, 3)],
        "acc": 0.9,
        "p": {"opt": "sgd", "lr": "0.1"},
        "t": {"team": "b"},
    },
    "r3": {"m": [(NAN, 1000, 0)], "p": {"opt": "adam"}, "t": {"team": "a"}},
    "r4": {"acc": 0.5, "p": {"opt": "adam", "lr": "0.001"}},
    "r5": {"m": [(0.2, 1000, 0)], "acc": 0.8, "p": {"opt": "sgd"}, "t": {"team": "b"}},
    "r6": {"m": [(INF, 1000, 0)], "p": {"opt": "rmsprop"}, "status": "FAILED"},
    "r7": {"m": [(0.1, 1000, 0)], "p": {"opt": "adam"}, "deleted": True},
}


def _log_search_runs(client: Any, exp_id: str) -> dict[str, str]:
    ids = {}
    for i, (name, s) in enumerate(SEARCH_RUNS.items()):
        run = client.create_run(exp_id, start_time=1000 * (i + 1), run_name=name, tags=s.get("t"))
        run_id = ids[name] = run.info.run_id
        metrics = [Metric("loss", v, ts, step) for v, ts, step in s.get("m", [])]
        if "acc" in s:
            metrics.append(Metric("acc", s["acc"], 1000, 0))
        params = [Param(k, v) for k, v in s["p"].items()]
        client.log_batch(run_id, metrics=metrics, params=params)
        client.set_terminated(run_id, s.get("status", "FINISHED"), end_time=1000 * (i + 1) + 500)
        if s.get("deleted"):
            client.delete_run(run_id)
    return ids


@pytest.fixture(scope="module")
def search_fixture(steppe_server: ServerProcess) -> Iterator[SearchFixture]:
    client = mlflow.MlflowClient(steppe_server.http_url)
    exp_id = _experiment(client, "search")
    yield SearchFixture(steppe_server.http_url, exp_id, _log_search_runs(client, exp_id))


SEARCHES: list[tuple[str, list[str], list[str]]] = [
    # (filter, order_by, expected run names in order)
    ("", [], ["r6", "r5", "r4", "r3", "r2", "r1"]),
    ("metrics.loss < 0.3", [], ["r5", "r2"]),
    ("metrics.loss <= 0.5", [], ["r5", "r2", "r1"]),
    ("metrics.loss != 0.2", [], ["r6", "r3", "r1"]),  # NaN matches != only
    ("metrics.loss > 1e10", [], ["r6"]),
    ("params.opt = 'adam'", [], ["r4", "r3", "r1"]),
    ("params.opt = 'adam' and metrics.acc > 0.6", [], ["r1"]),
    ("params.lr != '0.1'", [], ["r4", "r1"]),
    ("param.opt LIKE '%s%'", [], ["r6", "r5", "r2"]),
    ("tags.team LIKE 'b%'", [], ["r5", "r2"]),
    ("tags.team ILIKE 'A'", [], ["r3", "r1"]),
    ("tag.`team` = 'a'", [], ["r3", "r1"]),
    ("attributes.status = 'FAILED'", [], ["r6"]),
    ("attributes.run_name = 'r2'", [], ["r2"]),
    ("attributes.start_time > 2500 and attributes.start_time <= 5000", [], ["r5", "r4", "r3"]),
    ("status != 'FAILED' and params.opt = 'sgd'", [], ["r5", "r2"]),
    ("", ["metrics.loss ASC"], ["r5", "r2", "r1", "r6", "r3", "r4"]),
    ("", ["metrics.loss DESC"], ["r6", "r1", "r5", "r2", "r3", "r4"]),
    ("", ["params.opt ASC", "metrics.acc DESC"], ["r1", "r4", "r3", "r6", "r2", "r5"]),
    ("", ["tags.team DESC"], ["r5", "r2", "r3", "r1", "r6", "r4"]),
    ("", ["attributes.start_time ASC"], ["r1", "r2", "r3", "r4", "r5", "r6"]),
    ("", ["params.lr"], ["r4", "r1", "r2", "r6", "r5", "r3"]),
    ("metrics.acc >= 0.5", ["metrics.acc ASC"], ["r4", "r1", "r5", "r2"]),
]


BAD_FILTERS = [
    "metrics.loss < 0.3 OR params.opt = 'adam'",
    "metrics.loss < 'x'",
    "params.opt > 'a'",
    "nope.x = 'y'",
    "(metrics.loss < 1)",
]


@pytest.mark.parametrize(("filter_string", "order_by", "expected"), SEARCHES)
def test_search_runs_filters_and_order_by(
    search_fixture: SearchFixture, filter_string: str, order_by: list[str], expected: list[str]
) -> None:
    client = mlflow.MlflowClient(search_fixture.uri)
    runs = client.search_runs(
        [search_fixture.experiment_id], filter_string=filter_string, order_by=order_by
    )
    assert [r.info.run_name for r in runs] == expected


# mlflow's own SQL store configures SQLAlchemy mappers that use a loader strategy
# SQLAlchemy 2.1 deprecates; that is mlflow's business, not a steppe defect.
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_the_expected_search_results_are_mlflows_own(tmp_path: Path) -> None:
    """The expectations above are what MLflow's own SQL store answers for the same runs."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        client = mlflow.MlflowClient()
        exp_id = client.create_experiment("reference")
        _log_search_runs(client, exp_id)
        for filter_string, order_by, expected in SEARCHES:
            runs = client.search_runs([exp_id], filter_string, order_by=order_by)
            assert [r.info.run_name for r in runs] == expected, (filter_string, order_by)
        for bad_filter in BAD_FILTERS:
            with pytest.raises(MlflowException) as bad:
                client.search_runs([exp_id], bad_filter)
            assert mlflow_error(bad) == "INVALID_PARAMETER_VALUE"
    finally:
        mlflow.set_tracking_uri(previous)


def test_search_runs_view_types_in_and_paging(
    search_fixture: SearchFixture, mlflow_uri: str
) -> None:
    client = mlflow.MlflowClient()
    exp = [search_fixture.experiment_id]
    deleted = client.search_runs(exp, run_view_type=ViewType.DELETED_ONLY)
    assert [r.info.run_name for r in deleted] == ["r7"]
    assert len(client.search_runs(exp, run_view_type=ViewType.ALL)) == 7
    ids = search_fixture.ids
    picked = client.search_runs(exp, f"attributes.run_id IN ('{ids['r1']}', '{ids['r5']}')")
    assert [r.info.run_name for r in picked] == ["r5", "r1"]

    page = client.search_runs(exp, max_results=4, order_by=["metrics.loss ASC"])
    names = [r.info.run_name for r in page]
    assert len(names) == 4 and page.token
    page = client.search_runs(
        exp, max_results=4, order_by=["metrics.loss ASC"], page_token=page.token
    )
    names += [r.info.run_name for r in page]
    assert names == ["r5", "r2", "r1", "r6", "r3", "r4"] and not page.token

    frame = mlflow.search_runs(exp, order_by=["metrics.loss ASC"])
    assert list(frame["tags.mlflow.runName"]) == ["r5", "r2", "r1", "r6", "r3", "r4"]
    assert frame.loc[0, "metrics.loss"] == 0.2 and frame.loc[0, "params.opt"] == "sgd"

    # steppe's own search sees the same runs in the same order.
    mine = steppe.Client(mlflow.get_tracking_uri()).search_runs(exp, order_by=["metrics.loss ASC"])
    assert [r.info.run_name for r in mine] == ["r5", "r2", "r1", "r6", "r3", "r4"]


@pytest.mark.parametrize("bad_filter", BAD_FILTERS)
def test_bad_filters_are_rejected_like_mlflow(
    search_fixture: SearchFixture, bad_filter: str
) -> None:
    client = mlflow.MlflowClient(search_fixture.uri)
    with pytest.raises(MlflowException) as bad:
        client.search_runs([search_fixture.experiment_id], bad_filter)
    assert mlflow_error(bad) == "INVALID_PARAMETER_VALUE"


# -- limits and error codes over raw HTTP --------------------------------------------------


@pytest.fixture
def raw_run(mlflow_uri: str) -> str:
    client = mlflow.MlflowClient()
    return str(client.create_run(_experiment(client, "raw")).info.run_id)


def _batch(run_id: str, **parts: Any) -> dict[str, Any]:
    return {"run_id": run_id, **parts}


def _metrics(n: int, key: str = "m") -> list[dict[str, Any]]:
    return [{"key": key, "value": float(i), "timestamp": 1000 + i, "step": i} for i in range(n)]


def _params(n: int) -> list[dict[str, str]]:
    return [{"key": f"p{i}", "value": str(i)} for i in range(n)]


BATCH = "/api/2.0/mlflow/runs/log-batch"


def test_log_batch_limits(mlflow_uri: str, raw_run: str) -> None:
    ok = call(mlflow_uri, "POST", BATCH, _batch(raw_run, metrics=_metrics(1000)))
    assert ok.status == 200 and ok.body == {}
    params_ok = call(mlflow_uri, "POST", BATCH, _batch(raw_run, params=_params(100)))
    assert params_ok.status == 200
    for body in (
        _batch(raw_run, metrics=_metrics(1001)),
        _batch(raw_run, params=_params(101)),
        _batch(raw_run, tags=_params(101)),
        _batch(raw_run, metrics=_metrics(950), tags=_params(51)),
        _batch(raw_run, params=[{"key": "a", "value": "1"}, {"key": "a", "value": "1"}]),
        _batch(raw_run, metrics=[{"key": "x" * 251, "value": 1, "timestamp": 1}]),
        _batch(raw_run, params=[{"key": "k" * 251, "value": "1"}]),
        _batch(raw_run, tags=[{"key": "bad\tkey", "value": "1"}]),
        _batch(raw_run, metrics=[{"key": "../up", "value": 1, "timestamp": 1}]),
        _batch(raw_run, metrics=[{"key": "m", "value": "abc", "timestamp": 1}]),
        _batch(raw_run, metrics=[{"key": "m", "value": 1, "timestamp": -1}]),
        _batch(raw_run, metrics=[{"key": "m", "value": 1}]),
        {"metrics": _metrics(1)},
    ):
        answer = call(mlflow_uri, "POST", BATCH, body)
        assert (answer.status, answer.body["error_code"]) == (400, "INVALID_PARAMETER_VALUE"), body
        assert answer.body["message"]
    big = json.dumps(_batch(raw_run, tags=[{"key": "t", "value": "v" * 1_000_001}])).encode()
    too_big = call(mlflow_uri, "POST", BATCH, big)
    assert (too_big.status, too_big.body["error_code"]) == (400, "INVALID_PARAMETER_VALUE")

    history = call(
        mlflow_uri, "GET", "/api/2.0/mlflow/metrics/get-history", run_id=raw_run, metric_key="m"
    )
    assert len(history.body["metrics"]) == 1000  # rejected batches wrote nothing


def test_values_are_truncated_and_params_immutable_like_mlflow(
    mlflow_uri: str, raw_run: str
) -> None:
    long_param, long_tag = "p" * 7000, "t" * 9000
    answer = call(
        mlflow_uri,
        "POST",
        BATCH,
        _batch(
            raw_run,
            params=[{"key": "long", "value": long_param}],
            tags=[{"key": "long", "value": long_tag}],
        ),
    )
    assert answer.status == 200
    run = call(mlflow_uri, "GET", "/api/2.0/mlflow/runs/get", run_id=raw_run).body["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert params["long"] == long_param[:6000] and tags["long"] == long_tag[:8000]

    relog = call(
        mlflow_uri,
        "POST",
        "/api/2.0/mlflow/runs/log-parameter",
        {"run_id": raw_run, "key": "long", "value": "other"},
    )
    assert (relog.status, relog.body["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
    assert "long" in relog.body["message"]


def test_error_codes_and_statuses(mlflow_uri: str, raw_run: str) -> None:
    unknown = uuid.uuid4().hex
    cases: list[tuple[str, str, Any, dict[str, Any], int, str]] = [
        (
            "GET",
            "/api/2.0/mlflow/runs/get",
            None,
            {"run_id": unknown},
            404,
            "RESOURCE_DOES_NOT_EXIST",
        ),
        (
            "POST",
            "/api/2.0/mlflow/runs/log-metric",
            {"run_id": unknown, "key": "m", "value": 1, "timestamp": 1},
            {},
            404,
            "RESOURCE_DOES_NOT_EXIST",
        ),
        ("GET", "/api/2.0/mlflow/runs/get", None, {}, 400, "INVALID_PARAMETER_VALUE"),
        (
            "GET",
            "/api/2.0/mlflow/experiments/get",
            None,
            {"experiment_id": "424242"},
            404,
            "RESOURCE_DOES_NOT_EXIST",
        ),
        (
            "GET",
            "/api/2.0/mlflow/experiments/get-by-name",
            None,
            {"experiment_name": unknown},
            404,
            "RESOURCE_DOES_NOT_EXIST",
        ),
        (
            "POST",
            "/api/2.0/mlflow/experiments/create",
            {"name": "Default"},
            {},
            400,
            "RESOURCE_ALREADY_EXISTS",
        ),
        ("POST", "/api/2.0/mlflow/experiments/create", {}, {}, 400, "INVALID_PARAMETER_VALUE"),
        (
            "POST",
            "/api/2.0/mlflow/experiments/create",
            {"name": uuid.uuid4().hex, "artifact_location": "mlflow-artifacts:/../../x"},
            {},
            400,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            "POST",
            "/api/2.0/mlflow/runs/search",
            {"experiment_ids": ["0"], "filter": "metrics.a < 1 or metrics.b < 1"},
            {},
            400,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            "POST",
            "/api/2.0/mlflow/runs/search",
            {"experiment_ids": ["0"], "max_results": 50001},
            {},
            400,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            "POST",
            "/api/2.0/mlflow/runs/update",
            {"run_id": raw_run, "status": "DONE"},
            {},
            400,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            "POST",
            "/api/2.0/mlflow/runs/create",
            {"experiment_id": "424242"},
            {},
            404,
            "RESOURCE_DOES_NOT_EXIST",
        ),
        (
            "POST",
            "/api/2.0/mlflow/runs/log-metric",
            b"{not json",
            {},
            400,
            "INVALID_PARAMETER_VALUE",
        ),
        ("GET", "/api/2.0/mlflow/no-such-endpoint", None, {}, 404, "ENDPOINT_NOT_FOUND"),
        ("GET", "/api/2.0/mlflow/runs/log-batch", None, {}, 405, "METHOD_NOT_ALLOWED"),
    ]
    for method, path, body, query, status, code in cases:
        answer = call(mlflow_uri, method, path, body, **query)
        assert (answer.status, answer.body.get("error_code")) == (status, code), (path, body)
        assert isinstance(answer.body["message"], str) and answer.body["message"]


def test_the_status_table_agrees_with_steppe_errors() -> None:
    from steppe.errors import InvalidParameterValue, ResourceAlreadyExists, ResourceDoesNotExist
    from steppe.query.mlflow_api import HTTP_STATUS

    for cls in (InvalidParameterValue, ResourceAlreadyExists, ResourceDoesNotExist):
        assert HTTP_STATUS[cls.error_code] == cls.http_status


def test_ajax_api_prefix_and_server_info(mlflow_uri: str) -> None:
    answer = call(mlflow_uri, "POST", "/ajax-api/2.0/mlflow/experiments/search", {"max_results": 5})
    assert answer.status == 200 and answer.body["experiments"]
    info = call(mlflow_uri, "GET", "/api/3.0/mlflow/server-info")
    assert info.status == 200 and info.body["multipart_uploads_enabled"] is False
    models = call(
        mlflow_uri, "POST", "/api/2.0/mlflow/logged-models/search", {"experiment_ids": ["0"]}
    )
    assert (models.status, models.body) == (200, {"models": []})


# -- one data model, two doors -------------------------------------------------------------


def test_what_steppe_logs_mlflow_reads(mlflow_uri: str) -> None:
    steppe.set_tracking_uri(mlflow_uri)
    try:
        exp = steppe.set_experiment(f"from-steppe-{uuid.uuid4().hex[:6]}")
        with steppe.start_run(run_name="s", tags={"team": "x"}) as run:
            steppe.log_params({"lr": 0.1, "opt": "adam"})
            for step in range(100):
                steppe.log_metric("loss", 1.0 / (step + 1), step=step)
            steppe.log_metric("odd", NAN, step=0)
    finally:
        steppe.set_tracking_uri(None)
    client = mlflow.MlflowClient()
    got = client.get_run(run.info.run_id)
    assert got.info.experiment_id == exp.experiment_id and got.info.status == "FINISHED"
    assert got.info.run_name == "s" and got.data.tags["team"] == "x"
    assert got.data.params == {"lr": "0.1", "opt": "adam"}
    assert got.data.metrics["loss"] == pytest.approx(0.01) and math.isnan(got.data.metrics["odd"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(100))
    found = mlflow.search_runs([exp.experiment_id], "metrics.loss < 0.02", output_format="list")
    assert [r.info.run_id for r in found] == [run.info.run_id]


def test_what_mlflow_logs_steppe_reads_in_sql_and_json(mlflow_uri: str) -> None:
    mlflow.set_experiment(f"from-mlflow-{uuid.uuid4().hex[:6]}")
    with mlflow.start_run(run_name="m") as run:
        mlflow.log_params({"depth": 3})
        for step in range(50):
            mlflow.log_metrics({"loss": 1.0 / (step + 1), "acc": step / 50}, step=step)
        mlflow.set_tags({"team": "y"})
    client = steppe.Client(mlflow_uri)
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "m"
    assert got.data.params == {"depth": "3"} and got.data.tags["team"] == "y"
    assert got.data.metrics == {"loss": pytest.approx(1 / 50), "acc": pytest.approx(49 / 50)}
    table = client.sql(
        f"SELECT key, count(*) AS n, max(step) AS last FROM metrics "
        f"WHERE run_id = '{run.info.run_id}' GROUP BY key ORDER BY key"
    )
    assert table.to_pylist() == [
        {"key": "acc", "n": 50, "last": 49},
        {"key": "loss", "n": 50, "last": 49},
    ]


def test_points_acked_over_rest_survive_kill_9(tmp_path: Path, catalog_dsn: str | None) -> None:
    # On PostgreSQL the runs and the stream watermarks live outside the data dir: recovery
    # must still store every acked point exactly once.
    catalog_args = () if catalog_dsn is None else ("--catalog", catalog_dsn)
    server = start_server(tmp_path / "data", *catalog_args)
    try:
        run = call(server.http_url, "POST", "/api/2.0/mlflow/runs/create", {"experiment_id": "0"})
        run_id = run.body["run"]["info"]["run_id"]
        for start in range(0, 3000, 1000):
            answer = call(
                server.http_url,
                "POST",
                BATCH,
                {
                    "run_id": run_id,
                    "metrics": [dict(m, step=m["step"] + start) for m in _metrics(1000)],
                },
            )
            assert answer.status == 200
        server.proc.kill()  # SIGKILL: no flush; only the WAL holds the points
        server.proc.wait(timeout=30)
    finally:
        server.stop()
    again = start_server(tmp_path / "data", *catalog_args)
    try:
        steps: list[int] = []

        def all_there() -> bool:
            answer = call(
                again.http_url,
                "GET",
                "/api/2.0/mlflow/metrics/get-history",
                run_id=run_id,
                metric_key="m",
                max_results=5000,
            )
            steps[:] = [m["step"] for m in answer.body["metrics"]]
            return len(steps) >= 3000

        wait_until(all_there, timeout_s=10)
        assert sorted(steps) == list(range(3000))
        # Logging continues after the restart (the HTTP stream's seq resumes past the WAL).
        more = call(again.http_url, "POST", BATCH, {"run_id": run_id, "metrics": _metrics(1, "z")})
        assert more.status == 200
        rows = steppe.Client(again.http_url).sql(
            f"SELECT count(*) AS n FROM metrics WHERE run_id = '{run_id}'"
        )
        assert rows.to_pylist() == [{"n": 3001}]
    finally:
        assert again.stop() == 0


async def test_ingestor_log_points_validates_whole_and_is_durable(tmp_path: Path) -> None:
    from steppe.errors import InvalidParameterValue
    from steppe.ingest.layout import DataDir
    from steppe.ingest.service import Ingestor

    ingestor = Ingestor(DataDir.at(tmp_path / "data"))
    await ingestor.start("127.0.0.1", 0)
    run_id = "a" * 32
    try:
        ingestor.catalog.create_run(run_id, "0", "r", 1)
        for bad in (
            ([run_id], ["bad key!"], [0], [1], [1.0]),
            ([run_id, "b" * 32], ["k", "k"], [0, 0], [1, 1], [1.0, 2.0]),  # unknown run
            ([run_id], ["k"], [2**63], [1], [1.0]),
            ([run_id], ["k"], [0], [-1], [1.0]),
            ([run_id], ["k"], [0], [1], ["1.0"]),
            ([run_id], ["k", "k"], [0], [1], [1.0]),
        ):
            with pytest.raises(InvalidParameterValue):
                await ingestor.log_points(*bad)  # type: ignore[arg-type]
        assert ingestor.store.snapshot().tail.num_rows == 0  # rejected whole
        await ingestor.log_points([run_id] * 3, ["k"] * 3, [0, 1, 2], [1, 2, 3], [NAN, INF, 0.5])
        snapshot = ingestor.store.snapshot()
        assert snapshot.tail.num_rows == 3  # durable and visible on return
        assert snapshot.latest.to_pylist()[0]["value"] == 0.5
        ingestor.catalog.delete_run(run_id)
        ingestor.forget_runs([run_id])
        with pytest.raises(InvalidParameterValue, match="deleted"):
            await ingestor.log_points([run_id], ["k"], [3], [4], [1.0])
    finally:
        await ingestor.stop()
