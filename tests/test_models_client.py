"""steppe's own model client (steppe.models, steppe.pyfunc, steppe.sklearn) against a real
steppe server, and interop with the real mlflow client in both directions."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

import steppe
import steppe.models
import steppe.pyfunc
import steppe.sklearn
from steppe.errors import InvalidParameterValue, MlflowException
from tests.conftest import ServerProcess

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning"
)


@pytest.fixture(scope="module")
def iris() -> tuple[pd.DataFrame, pd.Series]:
    data = load_iris(as_frame=True)
    features = data.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    return features, data.target


@pytest.fixture(scope="module")
def fitted(iris: tuple[pd.DataFrame, pd.Series]) -> LogisticRegression:
    features, target = iris
    return LogisticRegression(max_iter=500, random_state=0).fit(features, target)


@pytest.fixture
def tracking(storage_server: ServerProcess) -> Iterator[str]:
    """steppe's fluent API aimed at the same server as ``mlflow_at_steppe`` (conftest's
    fixture of this name, with the model files in the data dir or on S3)."""
    steppe.set_tracking_uri(storage_server.http_url)
    yield storage_server.http_url
    while steppe.active_run() is not None:
        steppe.end_run()
    steppe.set_tracking_uri(None)


@pytest.fixture
def mlflow_at_steppe(
    storage_server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """The real mlflow client's fluent API aimed at the steppe server, once with the model
    files in its data dir and once with them on S3 (``--storage s3://...``)."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", storage_server.http_url)
    mlflow.set_tracking_uri(storage_server.http_url)
    mlflow.set_registry_uri(storage_server.http_url)
    yield mlflow
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- sklearn: steppe logs, both load --------------------------------------------------------------


def test_a_steppe_logged_sklearn_model_loads_in_steppe_and_mlflow_with_equal_predictions(
    tracking: str, mlflow_at_steppe: Any, iris: tuple[pd.DataFrame, pd.Series], fitted: Any
) -> None:
    features, _ = iris
    steppe.set_experiment(_name("models"))
    with steppe.start_run() as run:
        steppe.log_param("C", 1.0)
        info = steppe.sklearn.log_model(fitted, name="model", input_example=features.head(3))
    assert info.model_uri == f"models:/{info.model_id}"
    assert info.run_id == run.info.run_id
    expected = fitted.predict(features)

    assert (steppe.sklearn.load_model(info.model_uri).predict(features) == expected).all()
    assert (steppe.pyfunc.load_model(info.model_uri).predict(features) == expected).all()
    assert (
        steppe.sklearn.load_model(f"runs:/{run.info.run_id}/model").predict(features) == expected
    ).all()
    assert (mlflow_at_steppe.sklearn.load_model(info.model_uri).predict(features) == expected).all()
    assert (mlflow_at_steppe.pyfunc.load_model(info.model_uri).predict(features) == expected).all()

    # MLflow 3 bookkeeping, read by the real mlflow client.
    client = mlflow_at_steppe.MlflowClient()
    logged = client.get_logged_model(info.model_id)
    assert logged.status.to_proto() == 2 or str(logged.status).endswith("READY")
    assert logged.name == "model" and logged.source_run_id == run.info.run_id
    assert logged.params.get("C") == "1.0"
    outputs = client.get_run(run.info.run_id).outputs
    assert [o.model_id for o in outputs.model_outputs] == [info.model_id]
    mlmodel = steppe.models.get_model_info(info.model_uri)
    assert mlmodel.model_id == info.model_id
    assert mlmodel.signature is not None and mlmodel.signature.inputs is not None
    assert [c.name for c in mlmodel.signature.inputs.inputs] == list(features.columns)
    assert mlmodel.flavors["sklearn"]["serialization_format"] == "skops"
    assert mlmodel.flavors["python_function"]["loader_module"] == "mlflow.sklearn"


def test_an_mlflow_logged_sklearn_model_loads_in_steppe(
    tracking: str, mlflow_at_steppe: Any, iris: tuple[pd.DataFrame, pd.Series], fitted: Any
) -> None:
    features, _ = iris
    mlflow_at_steppe.set_experiment(_name("mlflow-models"))
    with mlflow_at_steppe.start_run() as run:
        info = mlflow_at_steppe.sklearn.log_model(
            fitted, name="model", input_example=features.head(2)
        )
    expected = fitted.predict(features)
    for uri in (info.model_uri, f"runs:/{run.info.run_id}/model"):
        assert (steppe.sklearn.load_model(uri).predict(features) == expected).all()
        assert (steppe.pyfunc.load_model(uri).predict(features) == expected).all()


def test_registered_versions_aliases_and_latest_resolve_as_model_uris(
    tracking: str, mlflow_at_steppe: Any, iris: tuple[pd.DataFrame, pd.Series], fitted: Any
) -> None:
    features, target = iris
    name = _name("iris-classifier")
    steppe.set_experiment(_name("registry"))
    with steppe.start_run():
        first = steppe.sklearn.log_model(fitted, name="model", registered_model_name=name)
    other = LogisticRegression(max_iter=500, C=0.01).fit(features, target)
    with steppe.start_run():
        second = steppe.sklearn.log_model(other, name="model", registered_model_name=name)
    assert (first.registered_model_version, second.registered_model_version) == (1, 2)
    client = steppe.Client()
    client.set_registered_model_alias(name, "champion", 1)

    def predictions(uri: str) -> Any:
        return steppe.pyfunc.load_model(uri).predict(features)

    assert (predictions(f"models:/{name}/1") == fitted.predict(features)).all()
    assert (predictions(f"models:/{name}@champion") == fitted.predict(features)).all()
    assert (predictions(f"models:/{name}/latest") == other.predict(features)).all()
    assert (predictions(f"models:/{name}/2") == other.predict(features)).all()
    # The real mlflow client resolves the same URIs against steppe's registry.
    loaded = mlflow_at_steppe.sklearn.load_model(f"models:/{name}@champion")
    assert (loaded.predict(features) == fitted.predict(features)).all()
    with pytest.raises(MlflowException):
        steppe.pyfunc.load_model(f"models:/{name}@no-such-alias")


@pytest.mark.parametrize(
    "uri",
    ["", "models:/", "runs:/only-a-run-id", "models:/name/not-a-version!"],
)
def test_a_malformed_model_uri_is_refused_with_the_rule(tracking: str, uri: str) -> None:
    with pytest.raises((InvalidParameterValue, MlflowException)) as caught:
        steppe.pyfunc.load_model(uri)
    assert "model" in str(caught.value).lower()


# -- serialization and the pickle opt-in ----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pickle", "cloudpickle"])
def test_a_pickled_model_loads_only_with_the_opt_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fitted: Any, iris: Any, fmt: str
) -> None:
    monkeypatch.delenv("STEPPE_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    folder = tmp_path / "m"
    steppe.sklearn.save_model(fitted, folder, serialization_format=fmt)
    with pytest.raises(MlflowException, match="STEPPE_ALLOW_PICKLE_DESERIALIZATION"):
        steppe.sklearn.load_model(folder)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    features, _ = iris
    assert (steppe.sklearn.load_model(folder).predict(features) == fitted.predict(features)).all()


class _Doubler:
    """Not a scikit-learn type: skops does not trust it by default."""

    def fit(self, X: Any, y: Any = None) -> _Doubler:
        return self

    def predict(self, X: Any) -> Any:
        return np.asarray(X)[:, 0] * 2


def test_a_skops_model_with_an_untrusted_type_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STEPPE_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    folder = tmp_path / "m"
    steppe.sklearn.save_model(_Doubler(), folder, skops_trusted_types=[f"{__name__}._Doubler"])
    # The trust list sits in the model's own MLmodel: it counts only with the opt-in.
    with pytest.raises(MlflowException, match="does not trust"):
        steppe.sklearn.load_model(folder)
    monkeypatch.setenv("STEPPE_ALLOW_PICKLE_DESERIALIZATION", "true")
    assert list(steppe.sklearn.load_model(folder).predict([[1.0], [2.0]])) == [2.0, 4.0]


def test_an_unknown_serialization_format_names_the_field(tmp_path: Path, fitted: Any) -> None:
    with pytest.raises(InvalidParameterValue, match="serialization_format"):
        steppe.sklearn.save_model(fitted, tmp_path / "m", serialization_format="joblib")


def test_saving_into_a_folder_that_holds_files_is_refused(tmp_path: Path, fitted: Any) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(MlflowException, match="not empty"):
        steppe.sklearn.save_model(fitted, tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


# -- signatures -------------------------------------------------------------------------------


def _examples() -> list[Any]:
    frame = pd.DataFrame(
        {
            "a": [1.0, 2.0],
            "b": [1, 2],
            "c": ["x", "y"],
            "d": [True, False],
            "e": np.array([1, 2], dtype="int32"),
            "f": np.array([1, 2], dtype="float32"),
        }
    )
    return [
        frame,
        frame["a"],
        np.zeros((3, 2, 2), dtype="float32"),
        np.array([0, 1]),
        {"a": np.zeros(3)},
        [{"a": 1, "b": "x"}],
    ]


@pytest.mark.parametrize("example", _examples(), ids=lambda e: type(e).__name__)
def test_infer_signature_writes_what_mlflow_writes(example: Any) -> None:
    from mlflow.models import infer_signature as mlflow_infer

    ours = steppe.models.infer_signature(example, params={"k": 1}).to_dict()
    theirs = mlflow_infer(example, params={"k": 1}).to_dict()
    assert ours == theirs


def test_predict_checks_the_input_against_the_signature(
    tmp_path: Path, iris: Any, fitted: Any
) -> None:
    features, _ = iris
    steppe.sklearn.save_model(fitted, tmp_path / "m", input_example=features.head(2))
    model = steppe.pyfunc.load_model(tmp_path / "m")
    with pytest.raises(MlflowException, match=r"missing inputs.*petal_width"):
        model.predict(features.drop(columns=["petal_width"]))
    as_text = features.astype(str)
    with pytest.raises(MlflowException, match="Incompatible input types for column"):
        model.predict(as_text)
    # Integers where doubles are expected are widened, as MLflow does; column order is fixed.
    whole = features.round().astype("int64")[list(reversed(features.columns))]
    assert (model.predict(whole) == fitted.predict(whole[features.columns].astype(float))).all()


# -- custom Python models ----------------------------------------------------------------------


class AddN(steppe.pyfunc.PythonModel):
    def load_context(self, context: steppe.pyfunc.PythonModelContext) -> None:
        self.n = int(Path(context.artifacts["n"]).read_text())

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        return model_input + self.n


def test_a_python_model_with_artifacts_round_trips_through_both_clients(
    tracking: str, mlflow_at_steppe: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "n.txt").write_text("3")
    frame = pd.DataFrame({"x": [1.0, 2.0]})
    steppe.set_experiment(_name("pyfunc"))
    with steppe.start_run():
        info = steppe.pyfunc.log_model(
            name="adder",
            python_model=AddN(),
            artifacts={"n": str(tmp_path / "n.txt")},
            input_example=frame,
        )
    assert info.signature is not None and info.signature.outputs is not None
    monkeypatch.setenv("STEPPE_ALLOW_PICKLE_DESERIALIZATION", "false")
    with pytest.raises(MlflowException, match="arbitrary code"):
        steppe.pyfunc.load_model(info.model_uri)
    monkeypatch.setenv("STEPPE_ALLOW_PICKLE_DESERIALIZATION", "true")
    ours = steppe.pyfunc.load_model(info.model_uri)
    assert list(ours.predict(frame)["x"]) == [4.0, 5.0]
    assert isinstance(ours.unwrap_python_model(), AddN)
    theirs = mlflow_at_steppe.pyfunc.load_model(info.model_uri)
    assert list(theirs.predict(frame)["x"]) == [4.0, 5.0]


def test_an_mlflow_python_model_loads_in_steppe(
    tracking: str, mlflow_at_steppe: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.pyfunc

    class Triple(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
        def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
            return model_input * 3

    frame = pd.DataFrame({"x": [1.0, 2.0]})
    mlflow_at_steppe.set_experiment(_name("mlflow-pyfunc"))
    with mlflow_at_steppe.start_run():
        info = mlflow_at_steppe.pyfunc.log_model(
            name="triple", python_model=Triple(), input_example=frame
        )
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    assert list(steppe.pyfunc.load_model(info.model_uri).predict(frame)["x"]) == [3.0, 6.0]


def test_a_model_logged_without_a_run_is_a_logged_model_of_the_experiment(
    tracking: str, fitted: Any, iris: Any
) -> None:
    features, _ = iris
    experiment = steppe.set_experiment(_name("no-run"))
    info = steppe.sklearn.log_model(fitted, name="standalone")
    assert info.run_id is None
    found = steppe.search_logged_models(experiment_ids=[experiment.experiment_id])
    assert [m.model_id for m in found] == [info.model_id]
    assert (
        steppe.sklearn.load_model(info.model_uri).predict(features) == fitted.predict(features)
    ).all()


# -- another flavor: the real mlflow.lightgbm against steppe's server ---------------------------


def test_another_flavor_logged_by_mlflow_through_steppe_loads_in_both(
    tracking: str, mlflow_at_steppe: Any, iris: tuple[pd.DataFrame, pd.Series]
) -> None:
    lightgbm = pytest.importorskip("lightgbm")
    import mlflow.lightgbm

    features, target = iris
    booster = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(features, target)
    mlflow_at_steppe.set_experiment(_name("lightgbm"))
    with mlflow_at_steppe.start_run():
        info = mlflow.lightgbm.log_model(booster, name="gbm", input_example=features.head(2))
    expected = booster.predict(features)
    assert (mlflow.lightgbm.load_model(info.model_uri).predict(features) == expected).all()
    # steppe.pyfunc hands other flavors to their own mlflow loader module.
    ours = steppe.pyfunc.load_model(info.model_uri)
    assert ours.loader_module == "mlflow.lightgbm"
    assert (ours.predict(features) == expected).all()


# -- MLflow 3 LoggedModel functions --------------------------------------------------------------


def test_external_models_model_params_and_the_last_logged_model(
    tracking: str, mlflow_at_steppe: Any, tmp_path: Path, fitted: Any
) -> None:
    steppe.set_experiment(_name("lm-fluent"))
    with steppe.start_run() as run:
        external = steppe.create_external_model(name="in-s3", params={"where": "s3"})
        assert steppe.last_logged_model().model_id == external.model_id
        steppe.log_model_params({"threshold": "0.5"})  # the last logged model
        info = steppe.sklearn.log_model(fitted, name="model")
    assert steppe.last_logged_model().model_id == info.model_id
    theirs = mlflow_at_steppe.MlflowClient().get_logged_model(external.model_id)
    assert theirs.tags["mlflow.model.isExternal"] == "true"
    assert theirs.params == {"where": "s3", "threshold": "0.5"}
    assert theirs.source_run_id == run.info.run_id
    client = steppe.Client()
    names = {f.path for f in client.list_logged_model_artifacts(info.model_id)}
    assert {"MLmodel", "model.skops", "requirements.txt", "python_env.yaml"} <= names

    (tmp_path / "notes.txt").write_text("extra file")
    pending = steppe.initialize_logged_model(name="by-hand")
    client.log_model_artifact(pending.model_id, tmp_path / "notes.txt")
    client.finalize_logged_model(pending.model_id, "READY")
    assert [f.path for f in client.list_logged_model_artifacts(pending.model_id)] == ["notes.txt"]
    with pytest.raises(InvalidParameterValue, match="local_path"):
        client.log_model_artifact(pending.model_id, tmp_path / "missing.txt")


def test_copy_model_version_and_stages(tracking: str, fitted: Any, iris: Any) -> None:
    features, _ = iris
    source, target = _name("src"), _name("dst")
    steppe.set_experiment(_name("copy"))
    with steppe.start_run():
        steppe.sklearn.log_model(fitted, name="model", registered_model_name=source)
    client = steppe.Client()
    copied = client.copy_model_version(f"models:/{source}/1", target)
    assert (copied.name, copied.version) == (target, "1")
    loaded = steppe.sklearn.load_model(f"models:/{target}/1")
    assert (loaded.predict(features) == fitted.predict(features)).all()
    assert client.get_model_version_stages(target, 1) == [
        "None",
        "Staging",
        "Production",
        "Archived",
    ]
    with pytest.raises(InvalidParameterValue, match="src_model_uri"):
        client.copy_model_version(f"runs:/{source}/1", target)


def test_long_transfers_report_progress_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    from steppe.artifacts import Progress

    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    quiet = Progress("uploading", "model m-1", 10 << 20)
    quiet.add(10 << 20)  # done within 2 s: nothing printed
    quiet.close()
    assert capsys.readouterr().err == ""

    slow = Progress("downloading", "model m-2", 100 << 20)
    for _ in range(4):
        now[0] += 1.5
        slow.add(25 << 20)
    slow.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("steppe: downloading model m-2: 50.0 of 100.0 MiB (50%)")
    assert lines[-1].startswith("steppe: downloading model m-2: 100.0 of 100.0 MiB (100%)")
    assert len(lines) == 3
