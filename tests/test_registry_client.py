"""steppe.Client's Model Registry and LoggedModel API against a real steppe server, and interop
with the real mlflow MlflowClient both ways."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from mlflow.tracking import MlflowClient

import steppe
from steppe.errors import InvalidParameterValue, ResourceAlreadyExists, ResourceDoesNotExist
from tests.conftest import ServerProcess

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning"
)


@pytest.fixture(scope="module")
def steppe_server(catalog_server: ServerProcess) -> ServerProcess:
    """This module runs on every catalog backend (SQLite, PostgreSQL: tests/conftest.py)."""
    return catalog_server


@pytest.fixture
def client(tracking: str) -> steppe.Client:
    return steppe.Client(tracking)


@pytest.fixture
def mlflow_client(steppe_server: ServerProcess) -> Iterator[MlflowClient]:
    yield MlflowClient(steppe_server.http_url, registry_uri=steppe_server.http_url)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _run_with_model(client: steppe.Client, path: str = "model") -> steppe.Run:
    experiment_id = client.create_experiment(_unique("reg"))
    run = client.create_run(experiment_id)
    client.log_text(run.info.run_id, "flavors: {}\n", f"{path}/MLmodel")
    client.set_terminated(run.info.run_id)
    return client.get_run(run.info.run_id)


def test_registered_model_lifecycle(client: steppe.Client) -> None:
    name = _unique("rm")
    created = client.create_registered_model(name, tags={"team": "a"}, description="first")
    assert (created.name, created.description, created.tags) == (name, "first", {"team": "a"})
    assert created.creation_timestamp > 0 and created.latest_versions == []
    with pytest.raises(ResourceAlreadyExists) as taken:
        client.create_registered_model(name)
    assert taken.value.error_code == "RESOURCE_ALREADY_EXISTS"

    assert client.update_registered_model(name, description="second").description == "second"
    client.set_registered_model_tag(name, "stage", 3)
    client.delete_registered_model_tag(name, "team")
    assert client.get_registered_model(name).tags == {"stage": "3"}

    run = _run_with_model(client)
    client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias(name, "champion", "1")
    renamed = client.rename_registered_model(name, name + "-new")
    assert renamed.description == "second" and renamed.aliases == {"champion": "1"}
    assert [v.version for v in renamed.latest_versions] == ["1"]
    assert client.get_model_version(name + "-new", 1).run_id == run.info.run_id
    with pytest.raises(ResourceDoesNotExist) as gone:
        client.get_registered_model(name)
    assert gone.value.error_code == "RESOURCE_DOES_NOT_EXIST"

    client.delete_registered_model(name + "-new")
    with pytest.raises(ResourceDoesNotExist):
        client.get_registered_model(name + "-new")
    with pytest.raises(ResourceDoesNotExist):
        client.get_model_version(name + "-new", 1)


def test_bad_names_are_rejected_with_the_field(client: steppe.Client) -> None:
    with pytest.raises(InvalidParameterValue, match="'name'"):
        client.create_registered_model("a/b")
    with pytest.raises(InvalidParameterValue, match="'name'"):
        client.create_registered_model("")
    with pytest.raises(InvalidParameterValue, match="key"):
        client.create_registered_model(_unique("rm"), tags={"k" * 251: "v"})


def test_search_registered_models_filters_orders_and_pages(client: steppe.Client) -> None:
    prefix = _unique("srch")
    names = [f"{prefix}-{i}" for i in range(5)]
    for i, name in enumerate(names):
        client.create_registered_model(name, tags={"parity": str(i % 2)})
    found = client.search_registered_models(f"name LIKE '{prefix}-%'", order_by=["name DESC"])
    assert [m.name for m in found] == names[::-1]
    upper = client.search_registered_models(f"name ILIKE '{prefix.upper()}-%'")
    assert sorted(m.name for m in upper) == names
    tagged = client.search_registered_models(
        f"name LIKE '{prefix}%' AND tags.`parity` = '1'", order_by=["name"]
    )
    assert [m.name for m in tagged] == [names[1], names[3]]

    pages, token = [], None
    while True:
        page = client.search_registered_models(
            f"name LIKE '{prefix}%'", max_results=2, order_by=["name"], page_token=token
        )
        pages.append([m.name for m in page])
        token = page.token
        if token is None:
            break
    assert pages == [names[0:2], names[2:4], names[4:]]
    assert [
        m.name
        for m in steppe.search_registered_models(
            filter_string=f"name LIKE '{prefix}%'", order_by=["name"]
        )
    ] == names
    assert len(steppe.search_registered_models(max_results=3)) == 3


def test_versions_stages_aliases_and_tags(client: steppe.Client) -> None:
    name = _unique("mv")
    client.create_registered_model(name)
    run = _run_with_model(client)
    source = f"{run.info.artifact_uri}/model"
    v1 = client.create_model_version(name, source, run.info.run_id, tags={"t": "1"})
    v2 = client.create_model_version(name, source, run.info.run_id, description="two")
    assert (v1.version, v2.version, v1.status, v1.current_stage) == ("1", "2", "READY", "None")
    assert v1.tags == {"t": "1"} and v2.description == "two"

    client.transition_model_version_stage(name, 1, "production")
    moved = client.transition_model_version_stage(
        name, "2", "Production", archive_existing_versions=True
    )
    assert moved.current_stage == "Production"
    assert client.get_model_version(name, "1").current_stage == "Archived"
    latest = client.get_latest_versions(name, ["Production"])
    assert [v.version for v in latest] == ["2"]
    with pytest.raises(InvalidParameterValue, match="stage"):
        client.transition_model_version_stage(name, "1", "Gold")

    assert client.update_model_version(name, "1", description="old").description == "old"
    client.set_model_version_tag(name, "1", "checked", True)
    client.set_model_version_tag(name, key="by_stage", value="x", stage="Production")
    assert client.get_model_version(name, "2").tags == {"by_stage": "x"}
    client.delete_model_version_tag(name, "1", "t")
    assert client.get_model_version(name, "1").tags == {"checked": "True"}

    client.set_registered_model_alias(name, "champion", "2")
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    assert client.get_model_version(name, "2").aliases == ["champion"]
    for reserved in ("latest", "v3", "V12"):
        with pytest.raises(InvalidParameterValue, match="alias"):
            client.set_registered_model_alias(name, reserved, "1")
    with pytest.raises(InvalidParameterValue, match="alias"):
        client.get_model_version_by_alias(name, "nobody")
    client.delete_registered_model_alias(name, "champion")
    assert client.get_registered_model(name).aliases == {}

    client.set_registered_model_alias(name, "challenger", "2")
    assert client.get_model_version_download_uri(name, "2") == source
    client.delete_model_version(name, "2")
    assert client.get_registered_model(name).aliases == {}
    assert client.create_model_version(name, source, run.info.run_id).version == "3"
    with pytest.raises(ResourceDoesNotExist):
        client.get_model_version(name, "2")
    with pytest.raises(InvalidParameterValue, match="version"):
        client.get_model_version(name, "two")


def test_search_model_versions_filters_and_pages(client: steppe.Client) -> None:
    name = _unique("smv")
    client.create_registered_model(name)
    run = _run_with_model(client)
    other = _run_with_model(client)
    for r in (run, run, other):
        client.create_model_version(name, f"{r.info.artifact_uri}/model", r.info.run_id)
    client.set_model_version_tag(name, "2", "ok", "yes")

    by_run = client.search_model_versions(f"name = '{name}' AND run_id = '{run.info.run_id}'")
    assert sorted(v.version for v in by_run) == ["1", "2"]
    by_tag = client.search_model_versions(f"name = '{name}' AND tags.ok = 'yes'")
    assert [v.version for v in by_tag] == ["2"]
    ordered = client.search_model_versions(f"name = '{name}'", order_by=["version_number ASC"])
    assert [v.version for v in ordered] == ["1", "2", "3"]
    first = client.search_model_versions(
        f"name = '{name}'", max_results=2, order_by=["version_number DESC"]
    )
    assert [v.version for v in first] == ["3", "2"] and first.token
    rest = client.search_model_versions(
        f"name = '{name}'", max_results=2, order_by=["version_number DESC"], page_token=first.token
    )
    assert [v.version for v in rest] == ["1"] and rest.token is None
    assert len(steppe.search_model_versions(filter_string=f"name = '{name}'")) == 3
    with pytest.raises(InvalidParameterValue, match="order_by"):
        client.search_model_versions(f"name = '{name}'", order_by=["size"])


def test_logged_model_lifecycle(client: steppe.Client) -> None:
    experiment_id = client.create_experiment(_unique("lm"))
    run = client.create_run(experiment_id)
    model = client.create_logged_model(
        experiment_id,
        name="clf",
        source_run_id=run.info.run_id,
        tags={"a": "1"},
        params={"alpha": 0.5},
        model_type="sklearn",
    )
    assert model.status == steppe.LoggedModelStatus.PENDING
    assert model.artifact_location.endswith(f"/models/{model.model_id}/artifacts")
    assert (model.source_run_id, model.model_type, model.params) == (
        run.info.run_id,
        "sklearn",
        {"alpha": "0.5"},
    )
    client.set_logged_model_tags(model.model_id, {"b": 2})
    client.delete_logged_model_tag(model.model_id, "a")
    client.log_model_params(model.model_id, {"beta": "x"})
    ready = client.finalize_logged_model(model.model_id, "READY")
    assert ready.status == "LOGGED_MODEL_READY"
    got = steppe.get_logged_model(model.model_id)
    assert got.tags == {"b": "2"} and got.params == {"alpha": "0.5", "beta": "x"}
    with pytest.raises(InvalidParameterValue, match="status"):
        client.finalize_logged_model(model.model_id, "DONE")

    client.create_logged_model(experiment_id, name="other")
    found = client.search_logged_models([experiment_id], filter_string="name = 'clf'")
    assert [m.model_id for m in found] == [model.model_id]
    page = client.search_logged_models([experiment_id], max_results=1)
    assert len(page) == 1 and page.token
    everything = steppe.search_logged_models([experiment_id])
    assert len(everything) == 2
    client.delete_logged_model(model.model_id)
    with pytest.raises(ResourceDoesNotExist):
        client.get_logged_model(model.model_id)
    with pytest.raises(InvalidParameterValue, match="model_id"):
        client.get_logged_model("../etc")


def test_register_model_from_runs_and_models_uris(client: steppe.Client) -> None:
    name = _unique("reg")
    run = _run_with_model(client, "model")
    v1 = steppe.register_model(f"runs:/{run.info.run_id}/model", name, tags={"k": "v"})
    assert v1.version == "1" and v1.source == f"{run.info.artifact_uri}/model"
    assert v1.run_id == run.info.run_id and v1.tags == {"k": "v"} and v1.model_id is None

    logged = client.create_logged_model(run.info.experiment_id, "clf", run.info.run_id)
    client.finalize_logged_model(logged.model_id, "READY")
    v2 = steppe.register_model(f"runs:/{run.info.run_id}/clf", name)
    assert (v2.version, v2.source, v2.model_id) == (
        "2",
        f"models:/{logged.model_id}",
        logged.model_id,
    )
    assert v2.run_id == run.info.run_id
    assert client.get_model_version_download_uri(name, "2") == logged.artifact_location

    v3 = steppe.register_model(f"models:/{logged.model_id}", name)
    assert (v3.version, v3.model_id, v3.run_id) == ("3", logged.model_id, run.info.run_id)
    with pytest.raises(ResourceDoesNotExist):
        steppe.register_model(f"runs:/{run.info.run_id}/nothing-here", name)
    assert [v.version for v in client.search_model_versions(f"name = '{name}'")] == ["3", "2", "1"]


def test_what_steppe_writes_mlflow_reads(
    client: steppe.Client, mlflow_client: MlflowClient
) -> None:
    name = _unique("interop")
    client.create_registered_model(name, tags={"team": "a"}, description="d")
    run = _run_with_model(client)
    version = client.create_model_version(
        name, f"{run.info.artifact_uri}/model", run.info.run_id, tags={"t": "1"}
    )
    client.set_registered_model_alias(name, "champion", version.version)
    client.transition_model_version_stage(name, version.version, "Staging")

    theirs = mlflow_client.get_registered_model(name)
    assert (theirs.name, theirs.description, theirs.tags) == (name, "d", {"team": "a"})
    assert theirs.aliases == {"champion": "1"}
    mv = mlflow_client.get_model_version_by_alias(name, "champion")
    ours = client.get_model_version(name, "1")
    for attr in ("name", "version", "source", "run_id", "current_stage", "tags", "aliases"):
        assert getattr(mv, attr) == getattr(ours, attr), attr
    assert mv.creation_timestamp == ours.creation_timestamp

    experiment_id = run.info.experiment_id
    logged = client.create_logged_model(experiment_id, "m", tags={"x": "y"}, params={"p": "1"})
    their_model = mlflow_client.get_logged_model(logged.model_id)
    assert (their_model.name, their_model.tags, their_model.params) == ("m", {"x": "y"}, {"p": "1"})
    assert their_model.artifact_location == logged.artifact_location


def test_what_mlflow_writes_steppe_reads(
    client: steppe.Client, mlflow_client: MlflowClient
) -> None:
    name = _unique("interop")
    mlflow_client.create_registered_model(name, tags={"owner": "b"}, description="theirs")
    run = _run_with_model(client)
    mlflow_client.create_model_version(
        name, f"{run.info.artifact_uri}/model", run.info.run_id, description="mv"
    )
    mlflow_client.set_registered_model_alias(name, "prod", "1")
    mlflow_client.set_model_version_tag(name, "1", "k", "v")

    ours = client.get_registered_model(name)
    assert (ours.description, ours.tags, ours.aliases) == ("theirs", {"owner": "b"}, {"prod": "1"})
    version = client.get_model_version_by_alias(name, "prod")
    theirs = mlflow_client.get_model_version(name, "1")
    for attr in ("name", "version", "source", "run_id", "description", "tags", "aliases"):
        assert getattr(version, attr) == getattr(theirs, attr), attr
    found = client.search_registered_models(f"name = '{name}'")
    assert [m.name for m in found] == [name]
    model = mlflow_client.create_logged_model(run.info.experiment_id, name="lm")
    assert client.get_logged_model(model.model_id).name == "lm"


def test_a_version_can_copy_another_by_version_alias_or_latest(client: steppe.Client) -> None:
    source_name, copy_name = _unique("src"), _unique("copy")
    client.create_registered_model(source_name)
    client.create_registered_model(copy_name)
    run = _run_with_model(client)
    for path in ("a", "b"):
        client.create_model_version(source_name, f"{run.info.artifact_uri}/{path}", run.info.run_id)
    client.set_registered_model_alias(source_name, "champ", "1")
    for uri, expected in (
        (f"models:/{source_name}/2", "b"),
        (f"models:/{source_name}@champ", "a"),
        (f"models:/{source_name}/latest", "b"),
    ):
        version = client.create_model_version(copy_name, uri)
        assert version.source == uri and version.run_id == run.info.run_id
        download = client.get_model_version_download_uri(copy_name, version.version)
        assert download == f"{run.info.artifact_uri}/{expected}", uri
    with pytest.raises(InvalidParameterValue, match="alias"):
        client.create_model_version(copy_name, f"models:/{source_name}@nobody")
