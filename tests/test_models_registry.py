"""MLflow Models against a real steppe server with the real mlflow client: LoggedModels
(log_model / load_model round trips) and the Model Registry's rules, some compared with
MLflow's own sqlite-backed store."""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression

from tests.conftest import ServerProcess
from tests.test_mlflow_compat import call

API = "/api/2.0/mlflow"
#: mlflow's own model code warns (type hints, stage deprecation, pydantic, ...): not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning"
)


@pytest.fixture(scope="module")
def steppe_server(catalog_server: ServerProcess) -> ServerProcess:
    """This module runs on every catalog backend (SQLite, PostgreSQL: tests/conftest.py)."""
    return catalog_server


@pytest.fixture
def mlflow_uri(steppe_server: ServerProcess) -> Iterator[str]:
    mlflow.set_tracking_uri(steppe_server.http_url)
    mlflow.set_registry_uri(steppe_server.http_url)
    yield steppe_server.http_url
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _fitted() -> tuple[LogisticRegression, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    return LogisticRegression().fit(x, y), x


def test_sklearn_log_model_round_trips_by_model_id_and_runs_uri(mlflow_uri: str) -> None:
    model, x = _fitted()
    mlflow.set_experiment(_unique("models"))
    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(model, name="model")
    expected = model.predict(x)
    by_id = mlflow.pyfunc.load_model(f"models:/{info.model_id}")
    assert (by_id.predict(x) == expected).all()
    by_run = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert (by_run.predict(x) == expected).all()

    client = MlflowClient()
    logged = client.get_logged_model(info.model_id)
    assert logged.status.to_int() == 2  # READY after the upload
    assert logged.source_run_id == run.info.run_id
    assert logged.artifact_location.endswith(f"/models/{info.model_id}/artifacts")
    fetched = client.get_run(run.info.run_id)
    assert [o.model_id for o in fetched.outputs.model_outputs] == [info.model_id]
    found = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string="name = 'model'"
    )
    assert [m.model_id for m in found] == [info.model_id]


def test_logged_model_lifecycle_over_raw_http(mlflow_uri: str) -> None:
    experiment_id = MlflowClient().create_experiment(_unique("lm"))
    created = call(
        mlflow_uri,
        "POST",
        f"{API}/logged-models",
        {"experiment_id": experiment_id, "name": "m", "tags": [{"key": "a", "value": "1"}]},
    )
    assert created.status == 200, created.body
    info = created.body["model"]["info"]
    model_id = info["model_id"]
    assert info["status"] == "LOGGED_MODEL_PENDING"
    assert info["artifact_uri"] == f"mlflow-artifacts:/{experiment_id}/models/{model_id}/artifacts"

    base = f"{API}/logged-models/{model_id}"
    assert (
        call(mlflow_uri, "PATCH", base + "/tags", {"tags": [{"key": "b", "value": "2"}]}).status
        == 200
    )
    assert (
        call(mlflow_uri, "POST", base + "/params", {"params": [{"key": "p", "value": "x"}]}).status
        == 200
    )
    assert call(mlflow_uri, "DELETE", base + "/tags/a").status == 200
    done = call(mlflow_uri, "PATCH", base, {"model_id": model_id, "status": "LOGGED_MODEL_READY"})
    assert done.body["model"]["info"]["status"] == "LOGGED_MODEL_READY"
    got = call(mlflow_uri, "GET", base).body["model"]
    assert got["info"]["tags"] == [{"key": "b", "value": "2"}]
    assert got["data"]["params"] == [{"key": "p", "value": "x"}]
    bad = call(mlflow_uri, "PATCH", base, {"status": "LOGGED_MODEL_PENDING"})
    assert bad.status == 400 and bad.body["error_code"] == "INVALID_PARAMETER_VALUE"

    for name in ("n1", "n2", "n3"):
        call(
            mlflow_uri,
            "POST",
            f"{API}/logged-models",
            {"experiment_id": experiment_id, "name": name},
        )
    page = call(
        mlflow_uri,
        "POST",
        f"{API}/logged-models/search",
        {
            "experiment_ids": [experiment_id],
            "max_results": 2,
            "order_by": [{"field_name": "name", "ascending": True}],
        },
    ).body
    assert [m["info"]["name"] for m in page["models"]] == ["m", "n1"]
    rest = call(
        mlflow_uri,
        "POST",
        f"{API}/logged-models/search",
        {
            "experiment_ids": [experiment_id],
            "page_token": page["next_page_token"],
            "order_by": [{"field_name": "name", "ascending": True}],
        },
    ).body
    assert [m["info"]["name"] for m in rest["models"]] == ["n2", "n3"]

    assert call(mlflow_uri, "DELETE", base).status == 200
    gone = call(mlflow_uri, "GET", base)
    assert gone.status == 404 and gone.body["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    unknown = call(mlflow_uri, "POST", f"{API}/logged-models", {"experiment_id": "999999"})
    assert unknown.status == 404


def test_register_model_load_by_version_and_alias(mlflow_uri: str) -> None:
    model, x = _fitted()
    name = _unique("reg")
    mlflow.set_experiment(_unique("registry"))
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(model, name="model")
    version = mlflow.register_model(f"models:/{info.model_id}", name)
    assert version.version == "1"
    client = MlflowClient()
    client.set_registered_model_alias(name, "champion", "1")
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    expected = model.predict(x)
    assert (mlflow.pyfunc.load_model(f"models:/{name}/1").predict(x) == expected).all()
    assert (mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(x) == expected).all()
    mv = client.get_model_version(name, "1")
    assert mv.status == "READY" and mv.run_id  # run_id taken from the logged model
    raw = call(mlflow_uri, "GET", f"{API}/model-versions/get", name=name, version="1").body
    assert raw["model_version"]["model_id"] == info.model_id  # mlflow's from_proto drops it
    assert [m.name for m in client.search_registered_models(f"name = '{name}'")] == [name]


def _registry_story(client: MlflowClient, name: str) -> list[Any]:
    """The same calls against steppe and against MLflow's sqlite store; their observable answers."""
    seen: list[Any] = []

    def error(fn: Any, *args: Any) -> str:
        with pytest.raises(MlflowException) as exc:
            fn(*args)
        return str(exc.value.error_code)

    client.create_registered_model(name, tags={"team": "a"}, description="d")
    seen.append(error(client.create_registered_model, name))
    for _ in range(3):
        seen.append(str(client.create_model_version(name, "s3://bucket/m", run_id=None).version))
    client.set_registered_model_alias(name, "champ", "2")
    client.set_registered_model_alias(name, "champ", "3")  # the alias moves
    seen.append(str(client.get_model_version_by_alias(name, "champ").version))
    seen.append(client.get_model_version(name, "2").aliases)
    client.delete_model_version(name, "3")
    seen.append(error(client.get_model_version_by_alias, name, "champ"))
    seen.append(str(client.create_model_version(name, "s3://bucket/m").version))  # 4, not 3
    seen.append(error(client.set_registered_model_alias, name, "latest", "1"))
    seen.append(error(client.set_registered_model_alias, name, "v1", "1"))
    seen.append(error(client.get_model_version, name, "3"))
    seen.append(error(client.get_registered_model, name + "-missing"))
    client.transition_model_version_stage(name, "1", "Production")
    client.transition_model_version_stage(name, "2", "production", archive_existing_versions=True)
    seen.append(
        [
            (str(v.version), v.current_stage)
            for v in client.search_model_versions(
                f"name = '{name}'", order_by=["version_number ASC"]
            )
        ]
    )
    seen.append(sorted(str(v.version) for v in client.get_latest_versions(name)))
    client.set_model_version_tag(name, "1", "k", "v")
    seen.append(client.get_model_version(name, "1").tags)
    client.rename_registered_model(name, name + "-new")
    seen.append(str(client.get_model_version(name + "-new", "2").version))
    seen.append([m.name for m in client.search_registered_models(f"name LIKE '{name[:8]}%'")])
    seen.append(client.get_model_version_download_uri(name + "-new", "1"))
    client.delete_registered_model(name + "-new")
    seen.append(error(client.get_registered_model, name + "-new"))
    return seen


def test_registry_semantics_match_mlflows_sqlite_store(mlflow_uri: str, tmp_path: Path) -> None:
    name = _unique("story")
    ours = _registry_story(MlflowClient(mlflow_uri, mlflow_uri), name)
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    theirs = _registry_story(MlflowClient(db, db), name)
    assert ours == theirs
    assert ours[1:4] == ["1", "2", "3"]
    assert ours[6] == "INVALID_PARAMETER_VALUE"  # the deleted version's alias went with it
    assert ours[7] == "4"


def test_sql_views_show_logged_models_and_versions(mlflow_uri: str) -> None:
    client = MlflowClient()
    experiment_id = client.create_experiment(_unique("sqlviews"))
    logged = client.create_logged_model(experiment_id, name="viewed")
    name = _unique("viewed")
    client.create_registered_model(name)
    client.create_model_version(name, f"models:/{logged.model_id}", model_id=logged.model_id)
    sql = (
        "SELECT l.name, v.version, v.status FROM model_versions v "
        "JOIN logged_models l USING (model_id) JOIN registered_models r ON r.name = v.name "
        f"WHERE v.name = '{name}'"
    )
    answer = call(mlflow_uri, "POST", "/api/steppe/v1/sql", {"query": sql})
    assert answer.status == 200, answer.body
    assert answer.body["rows"] == [["viewed", 1, "READY"]]


def test_registry_errors_over_raw_http_change_nothing(mlflow_uri: str) -> None:
    name = _unique("errs")
    assert call(mlflow_uri, "POST", f"{API}/registered-models/create", {"name": name}).status == 200
    created = call(
        mlflow_uri, "POST", f"{API}/model-versions/create", {"name": name, "source": "s3://b/m"}
    )
    assert created.body["model_version"]["version"] == "1"
    cases = [
        ("POST", "/registered-models/create", {"name": "a/b"}, 400, "INVALID_PARAMETER_VALUE"),
        ("POST", "/registered-models/create", {"name": ""}, 400, "INVALID_PARAMETER_VALUE"),
        ("POST", "/model-versions/create", {"name": name + "x", "source": "s3://b/m"}, 404, None),
        *[
            (
                "POST",
                "/model-versions/create",
                {"name": name, **body},
                400,
                "INVALID_PARAMETER_VALUE",
            )
            for body in (
                {"source": "/etc/passwd"},
                {"source": "file:///tmp/m"},
                {"source": "s3://b/m/../../other"},
                {"source": "s3://b/m/%2E%2E/other"},
                {"source": "runs:/abc/model"},
                {"source": "runs:/abc/model", "run_id": "def"},
                {"source": "models:/m-0123456789abcdef0123456789abcdef"},
                {"source": "mlflow-artifacts:/0/other/artifacts/model"},
            )
        ],
        (
            "POST",
            "/registered-models/alias",
            {"name": name, "alias": "a", "version": "7"},
            404,
            None,
        ),
        (
            "POST",
            "/registered-models/alias",
            {"name": name, "alias": "a b", "version": "1"},
            400,
            None,
        ),
        (
            "POST",
            "/model-versions/transition-stage",
            {"name": name, "version": "1", "stage": "Nowhere"},
            400,
            "INVALID_PARAMETER_VALUE",
        ),
        ("GET", "/logged-models/..%2F..%2Fetc", None, 400, "INVALID_PARAMETER_VALUE"),
    ]
    for method, path, body, status, code in cases:
        answer = call(mlflow_uri, method, API + path, body)
        assert answer.status == status, (path, body, answer.body)
        if code is not None:
            assert answer.body["error_code"] == code
        if status == 404:
            assert answer.body["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    got = call(mlflow_uri, "GET", f"{API}/registered-models/get", name=name).body
    assert got["registered_model"]["aliases"] == []
    assert got["registered_model"]["latest_versions"][0]["current_stage"] == "None"
    assert len(got["registered_model"]["latest_versions"]) == 1  # no version was created


def _search_story(client: MlflowClient, prefix: str) -> list[Any]:
    """Updates, tags, searches with order_by and paging: what MLflow's store answers."""
    seen: list[Any] = []
    names = [f"{prefix}-{c}" for c in ("b", "a", "C")]
    for i, name in enumerate(names):
        client.create_registered_model(name, tags={"team.x": str(i % 2)})
        client.create_model_version(name, f"s3://bucket/{name}", tags={"n": str(i)})
    seen.append(client.update_registered_model(names[0], "new text").description)
    client.set_registered_model_tag(names[0], "extra", "1")
    client.delete_registered_model_tag(names[0], "extra")
    seen.append(client.get_registered_model(names[0]).tags)
    seen.append(client.update_model_version(names[0], "1", "v text").description)
    client.set_model_version_tag(names[0], "1", "ok", "yes")
    client.delete_model_version_tag(names[0], "1", "n")
    seen.append(client.get_model_version(names[0], "1").tags)

    def found(models: Any) -> list[str]:
        return [m.name for m in models]

    seen.append(
        found(client.search_registered_models(f"name LIKE '{prefix}-%'", order_by=["name"]))
    )
    seen.append(found(client.search_registered_models(f"name ILIKE '{prefix}-c'")))
    seen.append(found(client.search_registered_models(f"name LIKE '{prefix}-c'")))
    seen.append(
        found(
            client.search_registered_models(
                f"name LIKE '{prefix}%' AND tags.`team.x` = '0'", order_by=["name DESC"]
            )
        )
    )
    page = client.search_registered_models(
        f"name LIKE '{prefix}%'", max_results=2, order_by=["name ASC"]
    )
    rest = client.search_registered_models(
        f"name LIKE '{prefix}%'", max_results=2, order_by=["name ASC"], page_token=page.token
    )
    seen.append((found(page), found(rest), rest.token or None))  # REST: "", store: None
    versions = client.search_model_versions(f"name = '{names[0]}' AND tags.ok = 'yes'")
    seen.append([(v.name, str(v.version)) for v in versions])
    first = client.search_model_versions(
        f"name LIKE '{prefix}%'", max_results=2, order_by=["name ASC"]
    )
    second = client.search_model_versions(
        f"name LIKE '{prefix}%'", max_results=2, order_by=["name ASC"], page_token=first.token
    )
    seen.append(([v.name for v in first], [v.name for v in second]))
    with pytest.raises(MlflowException) as too_long:
        client.set_registered_model_tag(names[0], "k" * 251, "v")
    seen.append(str(too_long.value.error_code))
    with pytest.raises(MlflowException) as bad_version:
        client.get_model_version(names[0], "one")
    seen.append(str(bad_version.value.error_code))
    return seen


def test_search_and_update_semantics_match_mlflows_sqlite_store(
    mlflow_uri: str, tmp_path: Path
) -> None:
    prefix = _unique("find")
    ours = _search_story(MlflowClient(mlflow_uri, mlflow_uri), prefix)
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    theirs = _search_story(MlflowClient(db, db), prefix)
    assert ours == theirs
    assert ours[5] == [f"{prefix}-C"]  # ILIKE ignores case, LIKE does not
    assert ours[6] == []


def test_logged_model_artifact_routes_list_and_download(mlflow_uri: str) -> None:
    model, _ = _fitted()
    mlflow.set_experiment(_unique("lm-files"))
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(model, name="model")
    base = f"{API}/logged-models/{info.model_id}/artifacts"
    listed = call(mlflow_uri, "GET", base + "/directories")
    assert listed.status == 200, listed.body
    assert listed.body["root_uri"].endswith(f"/models/{info.model_id}/artifacts")
    paths = {f["path"]: f for f in listed.body["files"]}
    assert "MLmodel" in paths and paths["MLmodel"]["is_dir"] is False
    url = f"{mlflow_uri}/ajax-api/2.0/mlflow/logged-models/{info.model_id}/artifacts/files"
    with urllib.request.urlopen(url + "?artifact_file_path=MLmodel", timeout=30) as response:
        assert b"flavors" in response.read()
    for query in ({"artifact_directory_path": "../../.."}, {"artifact_directory_path": "/etc"}):
        bad = call(mlflow_uri, "GET", base + "/directories", **query)
        assert bad.status == 400 and bad.body["error_code"] == "INVALID_PARAMETER_VALUE", bad.body
    bad = call(mlflow_uri, "GET", base + "/files", artifact_file_path="../../../x")
    assert bad.status == 400, bad.body
    missing = call(mlflow_uri, "GET", f"{API}/logged-models/m-{'0' * 32}/artifacts/directories")
    assert missing.status == 404


def test_logged_model_metrics_and_search_by_metric(mlflow_uri: str) -> None:
    client = MlflowClient()
    experiment_id = client.create_experiment(_unique("lm-metrics"))
    run_id = client.create_run(experiment_id).info.run_id
    models = [client.create_logged_model(experiment_id, name=f"m{i}") for i in range(3)]
    for model, acc in zip(models[:2], (0.4, 0.9), strict=True):
        client.log_metric(run_id, "acc", round(acc - 0.3, 2), step=0, model_id=model.model_id)
        client.log_metric(
            run_id,
            "acc",
            acc,
            step=1,
            model_id=model.model_id,
            dataset_name="val",
            dataset_digest="d1",
        )
    client.log_batch(
        run_id,
        metrics=[mlflow.entities.Metric("loss", 0.25, 1, 0, model_id=models[2].model_id)],
    )
    got = client.get_logged_model(models[1].model_id)
    assert sorted((m.key, m.value, m.step) for m in got.metrics) == [
        ("acc", 0.6, 0),
        ("acc", 0.9, 1),
    ]
    assert {m.dataset_name for m in got.metrics} == {None, "val"}
    assert [m.key for m in client.get_logged_model(models[2].model_id).metrics] == ["loss"]

    def names(**kwargs: Any) -> list[str]:
        return [m.name for m in client.search_logged_models([experiment_id], **kwargs)]

    assert names(filter_string="metrics.acc > 0.5") == ["m1"]
    assert sorted(names(filter_string="metrics.acc >= 0.4")) == ["m0", "m1"]
    assert names(order_by=[{"field_name": "metrics.acc", "ascending": False}]) == ["m1", "m0", "m2"]
    assert names(order_by=[{"field_name": "metrics.acc", "ascending": True}]) == ["m0", "m1", "m2"]
    assert sorted(names(datasets=[{"dataset_name": "val"}], filter_string="metrics.acc > 0")) == [
        "m0",
        "m1",
    ]
    assert names(datasets=[{"dataset_name": "other"}], filter_string="metrics.acc > 0") == []

    history = call(
        mlflow_uri, "GET", f"{API}/metrics/get-history", run_id=run_id, metric_key="acc"
    ).body
    before = len(history["metrics"])
    with pytest.raises(MlflowException) as unknown:
        client.log_metric(run_id, "acc", 1.0, model_id=f"m-{'0' * 32}")
    assert unknown.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    after = call(mlflow_uri, "GET", f"{API}/metrics/get-history", run_id=run_id, metric_key="acc")
    assert len(after.body["metrics"]) == before == 4  # the rejected point was not logged
