"""Managing experiments and runs, images and tables, through steppe's fluent API and
steppe.Client, read back by the real mlflow client (against a real steppe server)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import mlflow
import numpy as np
import pytest
from mlflow.entities import ViewType

import steppe
from tests.conftest import ServerProcess


@pytest.fixture
def uri(steppe_server: ServerProcess) -> Iterator[str]:
    steppe.set_tracking_uri(steppe_server.http_url)
    mlflow.set_tracking_uri(steppe_server.http_url)
    yield steppe_server.http_url
    while steppe.active_run() is not None:
        steppe.end_run()
    steppe.set_tracking_uri(None)
    mlflow.set_tracking_uri(None)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_experiment_lifecycle_and_tags(uri: str) -> None:
    exp = steppe.set_experiment(_name("manage"))
    steppe.set_experiment_tag("team", "vision")
    steppe.set_experiment_tags({"stage": "dev", "owner": "ana"})
    steppe.delete_experiment_tag("owner")
    reader = mlflow.MlflowClient()
    assert {
        k: v for k, v in reader.get_experiment(exp.experiment_id).tags.items() if "." not in k
    } == {"team": "vision", "stage": "dev"}

    client = steppe.Client()
    renamed = _name("renamed")
    client.rename_experiment(exp.experiment_id, renamed)
    assert reader.get_experiment(exp.experiment_id).name == renamed
    steppe.delete_experiment(exp.experiment_id)
    assert reader.get_experiment(exp.experiment_id).lifecycle_stage == "deleted"
    steppe.restore_experiment(exp.experiment_id)
    assert reader.get_experiment(exp.experiment_id).lifecycle_stage == "active"
    with pytest.raises(steppe.InvalidParameterValue, match="new_name"):
        client.rename_experiment(exp.experiment_id, "")
    # MLflow's rule, on the client as on the server: all spaces is a name.
    spaces = " " * (50 + uuid.uuid4().int % 450)  # names are unique on the shared server
    client.rename_experiment(exp.experiment_id, spaces)
    assert reader.get_experiment(exp.experiment_id).name == spaces


def test_run_delete_restore_and_parent(uri: str) -> None:
    exp = steppe.set_experiment(_name("runs"))
    with steppe.start_run() as parent, steppe.start_run(nested=True) as child:
        steppe.log_param("p", 1)
    found = steppe.get_parent_run(child.info.run_id)
    assert found is not None and found.info.run_id == parent.info.run_id
    assert steppe.get_parent_run(parent.info.run_id) is None

    steppe.delete_run(child.info.run_id)
    deleted = mlflow.search_runs(
        [exp.experiment_id], run_view_type=ViewType.DELETED_ONLY, output_format="list"
    )
    assert [r.info.run_id for r in deleted] == [child.info.run_id]
    steppe.restore_run(child.info.run_id)
    assert mlflow.MlflowClient().get_run(child.info.run_id).info.lifecycle_stage == "active"
    with pytest.raises(steppe.InvalidParameterValue, match="run_id"):
        steppe.delete_run("not a run id!")


def test_tables_append_and_load_across_runs(uri: str) -> None:
    exp = steppe.set_experiment(_name("tables"))
    run_ids = []
    for score in (0.1, 0.9):
        with steppe.start_run() as run:
            steppe.log_table({"input": ["a"], "score": [score]}, "eval/table.json")
            steppe.log_table({"input": ["b"], "score": [score + 0.01]}, "eval/table.json")
        run_ids.append(run.info.run_id)
    table = steppe.load_table("eval/table.json", extra_columns=["run_id"])
    assert sorted(zip(table["input"], table["score"], table["run_id"], strict=True)) == sorted(
        [
            ("a", 0.1, run_ids[0]),
            ("b", 0.11, run_ids[0]),
            ("a", 0.9, run_ids[1]),
            ("b", 0.91, run_ids[1]),
        ]
    )
    # MLflow reads steppe's tables the same way (its layout, its tag).
    theirs = mlflow.MlflowClient().load_table(exp.experiment_id, "eval/table.json", [run_ids[0]])
    assert list(theirs["input"]) == ["a", "b"]
    tag = mlflow.MlflowClient().get_run(run_ids[0]).data.tags["mlflow.loggedArtifacts"]
    assert tag == '[{"path": "eval/table.json", "type": "table"}]'
    with pytest.raises(steppe.InvalidParameterValue, match="artifact_file"):
        steppe.log_table({"a": [1]}, "bad:name.json")
    with pytest.raises(steppe.InvalidParameterValue, match="artifact_file"):
        steppe.log_table({"a": [1]}, "table.csv")


def test_images_as_files_and_time_stepped(uri: str) -> None:
    steppe.set_experiment(_name("images"))
    picture = np.zeros((8, 6, 3), dtype=np.uint8)
    picture[:, :, 0] = 255
    with steppe.start_run() as run:
        steppe.log_image(picture, "plots/red.png")
        for step in (0, 10):
            steppe.log_image(picture / 255.0, key="train/samples", step=step)
        with pytest.raises(steppe.InvalidParameterValue, match="key"):
            steppe.log_image(picture, key="bad*key")
        with pytest.raises(steppe.InvalidParameterValue, match="artifact_file"):
            steppe.log_image(picture, "x.png", step=1)
        with pytest.raises(steppe.InvalidParameterValue, match="image"):
            steppe.log_image(np.full((2, 2), 300), "too-bright.png")
    reader = mlflow.MlflowClient()
    assert [f.path for f in reader.list_artifacts(run.info.run_id, "plots")] == ["plots/red.png"]
    images = sorted(f.path for f in reader.list_artifacts(run.info.run_id, "images"))
    assert len(images) == 4
    assert all(p.startswith("images/train~samples+step+") for p in images)
    assert sum(p.endswith("+compressed.webp") for p in images) == 2
    assert {p.split("+step+")[1].split("+")[0] for p in images} == {"0", "10"}
    assert reader.get_run(run.info.run_id).data.tags["mlflow.loggedImages"] == "True"
    local = reader.download_artifacts(run.info.run_id, "plots/red.png")
    from PIL import Image

    with Image.open(local) as back:
        assert back.size == (6, 8) and back.getpixel((0, 0)) == (255, 0, 0)


def test_artifact_uri_and_uris(uri: str) -> None:
    steppe.set_experiment(_name("uris"))
    assert steppe.is_tracking_uri_set()
    assert steppe.get_registry_uri() == uri
    steppe.set_registry_uri(uri)
    with pytest.raises(steppe.InvalidParameterValue, match="uri"):
        steppe.set_registry_uri("http://elsewhere:5000")
    with steppe.start_run() as run:
        root = steppe.get_artifact_uri()
        assert root == mlflow.MlflowClient().get_run(run.info.run_id).info.artifact_uri
        assert steppe.get_artifact_uri("a/b.txt") == root + "/a/b.txt"
