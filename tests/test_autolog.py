"""``steppe.sklearn.autolog()``, ``steppe.autolog()`` and ``steppe.data`` against a real steppe
server, with real scikit-learn fits on datasets that ship with it, read back by the real mlflow
client over REST."""

from __future__ import annotations

import inspect
import json
import logging
import re
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import steppe
import steppe.models
import steppe.sklearn
from steppe.errors import InvalidParameterValue
from steppe.sklearn import autologging
from tests.conftest import ServerProcess, clean_env
from tests.test_example import _owner, _stop_background_server

#: The lead's model flavor (steppe.sklearn.log_model, steppe.models.infer_signature) is being
#: written beside this; the model assertions switch on once it is real.
FLAVOR_READY = hasattr(steppe.models, "infer_signature")
needs_flavor = pytest.mark.skipif(not FLAVOR_READY, reason="steppe.sklearn.log_model not built")

CLASSIFIER_METRICS = {
    "training_precision_score",
    "training_recall_score",
    "training_f1_score",
    "training_accuracy_score",
    "training_log_loss",
    "training_roc_auc",
    "training_score",
}
REGRESSOR_METRICS = {
    "training_mean_squared_error",
    "training_root_mean_squared_error",
    "training_mean_absolute_error",
    "training_r2_score",
    "training_score",
}

# The user's example, verbatim except the import lines and a dataset that ships with
# scikit-learn (liblinear is binary-only in scikit-learn 1.9: breast cancer, not iris).
EXAMPLE = textwrap.dedent(
    """
    import steppe as mlflow
    import steppe.sklearn
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score

    X, y = load_breast_cancer(return_X_y=True)

    mlflow.sklearn.autolog()
    with mlflow.start_run():
        mlflow.log_param("learning_rate", 0.01)
        model = LogisticRegression(solver="liblinear", random_state=42).fit(X, y)
        mlflow.log_metric("accuracy", accuracy_score(y, model.predict(X)))
        print(f"Run ID: {mlflow.active_run().info.run_id}")
    """
)


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    _stop_background_server(tmp_path)


@pytest.fixture
def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_breast_cancer(return_X_y=True)
    return X, y


@pytest.fixture
def autolog(tracking: str) -> Iterator[str]:
    """The session server as tracking URI, a fresh experiment, autolog off afterwards."""
    steppe.set_experiment(f"autolog-{np.random.default_rng().integers(1 << 62)}")
    yield tracking
    steppe.sklearn.autolog(disable=True)


def _mlflow(tracking_uri: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def _artifacts(client: mlflow.MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    return {f.path for f in client.list_artifacts(run_id, path)}


def _runs(experiment_id: str) -> list[Any]:
    return steppe.Client().search_runs([experiment_id])


def _experiment_id() -> str:
    from steppe import fluent

    return fluent._resolve_experiment_id(steppe.Client())


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# --- the user's example, end to end ------------------------------------------------------


def test_users_example_end_to_end_read_back_by_mlflow(folder: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", EXAMPLE],
        cwd=folder,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    match = re.search(r"Run ID: ([0-9a-f]{32})", done.stdout)
    assert match, done.stdout
    run_id = match.group(1)
    owner = _owner(folder)
    assert owner is not None
    client = _mlflow(f"http://127.0.0.1:{owner['http_port']}")
    run = client.get_run(run_id)

    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["learning_rate"] == "0.01"
    expected = LogisticRegression(solver="liblinear", random_state=42).get_params(deep=True)
    assert {k: params[k] for k in expected} == {k: str(v) for k, v in expected.items()}

    metrics = run.data.metrics
    X, y = load_breast_cancer(return_X_y=True)
    model = LogisticRegression(solver="liblinear", random_state=42).fit(X, y)
    # The user's own metric is still there, beside autolog's training metrics.
    assert metrics["accuracy"] == pytest.approx(float((model.predict(X) == y).mean()))
    assert set(metrics) >= CLASSIFIER_METRICS
    assert metrics["training_accuracy_score"] == pytest.approx(metrics["accuracy"])
    assert metrics["training_score"] == pytest.approx(model.score(X, y))
    assert 0.9 < metrics["training_roc_auc"] <= 1.0
    history = client.get_metric_history(run_id, "training_log_loss")
    assert [m.step for m in history] == [0]

    assert run.data.tags["estimator_name"] == "LogisticRegression"
    assert run.data.tags["estimator_class"] == "sklearn.linear_model._logistic.LogisticRegression"
    # A run the user started is not an autologging run.
    assert "mlflow.autologging" not in run.data.tags

    assert {
        "estimator.html",
        "training_confusion_matrix.png",
        "training_roc_curve.png",
        "training_precision_recall_curve.png",
    } <= _artifacts(client, run_id)
    html = Path(client.download_artifacts(run_id, "estimator.html", str(folder))).read_text()
    assert html.startswith("<!DOCTYPE html>") and "LogisticRegression" in html
    png = Path(client.download_artifacts(run_id, "training_confusion_matrix.png", str(folder)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The training data as an input (MLflow's digest), and predict's data as "eval".
    inputs = {
        next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
        for d in run.inputs.dataset_inputs
    }
    assert inputs["train"].digest == mlflow.data.from_numpy(X, targets=y).digest
    assert json.loads(inputs["train"].profile)["features_shape"] == [569, 30]
    assert inputs["eval"].digest == mlflow.data.from_numpy(X).digest


@needs_flavor
def test_users_example_logs_the_model_as_a_logged_model(folder: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", EXAMPLE],
        cwd=folder,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    match = re.search(r"Run ID: ([0-9a-f]{32})", done.stdout)
    assert match, done.stdout
    owner = _owner(folder)
    assert owner is not None
    client = _mlflow(f"http://127.0.0.1:{owner['http_port']}")
    run = client.get_run(match.group(1))
    outputs = run.outputs.model_outputs
    assert len(outputs) == 1
    logged = client.get_logged_model(outputs[0].model_id)
    assert logged.name == "model"
    mlflow.set_tracking_uri(f"http://127.0.0.1:{owner['http_port']}")
    try:
        loaded = mlflow.sklearn.load_model(f"models:/{logged.model_id}")
    finally:
        mlflow.set_tracking_uri(None)
    X, y = load_breast_cancer(return_X_y=True)
    assert loaded.score(X, y) == pytest.approx(run.data.metrics["training_score"])


# --- what a fit logs ----------------------------------------------------------------------


def test_fit_without_a_run_creates_and_ends_an_autologging_run(
    autolog: str, breast_cancer: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = breast_cancer
    steppe.sklearn.autolog(log_models=False, extra_tags={"team": "vision"})
    model = LogisticRegression(solver="liblinear", max_iter=5000).fit(X, y)
    assert steppe.active_run() is None
    run = steppe.last_active_run()
    assert run is not None
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.autologging"] == "sklearn"
    assert run.data.tags["team"] == "vision"
    assert run.data.params["max_iter"] == "5000"
    assert run.data.metrics["training_score"] == pytest.approx(model.score(X, y))
    assert set(run.data.metrics) >= CLASSIFIER_METRICS


def test_a_failing_fit_fails_the_run_autolog_created(autolog: str) -> None:
    steppe.sklearn.autolog(log_models=False)
    with pytest.raises(ValueError):
        LogisticRegression().fit(np.array([[1.0], [np.nan]]), np.array([0, 1]))
    assert steppe.active_run() is None
    run = steppe.last_active_run()
    assert run is not None and run.info.status == "FAILED"


def test_regressor_metrics(autolog: str) -> None:
    X, y = load_diabetes(return_X_y=True)
    steppe.sklearn.autolog(log_models=False)
    with steppe.start_run() as run:
        model = LinearRegression().fit(X, y)
    metrics = steppe.get_run(run.info.run_id).data.metrics
    assert set(metrics) >= REGRESSOR_METRICS
    predicted = model.predict(X)
    mse = float(np.mean((predicted - y) ** 2))
    assert metrics["training_mean_squared_error"] == pytest.approx(mse)
    assert metrics["training_root_mean_squared_error"] == pytest.approx(mse**0.5)
    assert metrics["training_r2_score"] == pytest.approx(model.score(X, y))
    assert not any(k.startswith("training_accuracy") for k in metrics)
    client = _mlflow(autolog)
    assert "training_confusion_matrix.png" not in _artifacts(client, run.info.run_id)


def test_pipeline_logs_once_with_deep_params(
    autolog: str, breast_cancer: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = breast_cancer
    steppe.sklearn.autolog(log_models=False)
    pipe = Pipeline(
        [("scale", StandardScaler()), ("clf", LogisticRegression(C=0.5, max_iter=1000))]
    )
    pipe.fit(X, y)  # no run active: one run for the pipeline, none for its steps
    run = steppe.last_active_run()
    assert run is not None
    runs = _runs(run.info.experiment_id)
    assert [r.info.run_id for r in runs] == [run.info.run_id]
    assert run.data.params["clf__C"] == "0.5"
    assert run.data.params["scale__with_mean"] == "True"
    assert run.data.tags["estimator_name"] == "Pipeline"
    assert "training_accuracy_score" in run.data.metrics


def test_grid_search_best_params_child_runs_and_cv_results(
    autolog: str, breast_cancer: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    X, y = breast_cancer
    steppe.sklearn.autolog(log_models=False, max_tuning_runs=2)
    grid = {"C": [0.01, 0.1, 1.0], "fit_intercept": [True, False]}
    with steppe.start_run() as parent:
        search = GridSearchCV(
            LogisticRegression(solver="liblinear", max_iter=3000), grid, cv=3
        ).fit(X, y)
    pid = parent.info.run_id
    run = steppe.get_run(pid)
    assert run.data.params["best_C"] == str(search.best_params_["C"])
    assert run.data.params["best_fit_intercept"] == str(search.best_params_["fit_intercept"])
    assert run.data.params["cv"] == "3"
    assert "estimator__C" not in run.data.params  # the seed estimator's params are not deep
    assert run.data.metrics["best_cv_score"] == pytest.approx(search.best_score_)
    assert run.data.tags["estimator_name"] == "GridSearchCV"

    children = [r for r in _runs(run.info.experiment_id) if r.info.run_id != pid]
    assert len(children) == 2  # max_tuning_runs of the 6 candidates
    ranks = sorted(search.cv_results_["rank_test_score"])[:2]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == pid
        assert child.data.tags["mlflow.autologging"] == "sklearn"
        assert child.data.tags["estimator_name"] == "LogisticRegression"
        assert child.data.params["max_iter"] == "3000"
        assert child.data.metrics["rank_test_score"] in ranks
        assert "mean_test_score" in child.data.metrics and "std_fit_time" in child.data.metrics
        assert not any(k.startswith(("split", "param")) for k in child.data.metrics)
    best = min(children, key=lambda r: r.data.metrics["rank_test_score"])
    assert best.data.params["C"] == str(search.best_params_["C"])

    client = _mlflow(autolog)
    table = pd.read_csv(client.download_artifacts(pid, "cv_results.csv", str(tmp_path)))
    assert len(table) == 6 and "mean_test_score" in table.columns
    # The candidates' fits (18 + the refit) logged nothing of their own.
    assert run.data.params["estimator"].startswith("LogisticRegression(")


def test_max_tuning_runs_none_logs_every_candidate(
    autolog: str, breast_cancer: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = breast_cancer
    steppe.sklearn.autolog(log_models=False, max_tuning_runs=None)
    with steppe.start_run() as parent:
        GridSearchCV(
            LogisticRegression(solver="liblinear", max_iter=3000), {"C": [0.1, 1.0, 10.0]}, cv=2
        ).fit(X, y)
    assert len(_runs(parent.info.experiment_id)) == 1 + 3


def test_cross_val_score_is_not_logged(
    autolog: str, breast_cancer: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = breast_cancer
    steppe.sklearn.autolog(log_models=False)
    import sklearn.model_selection

    sklearn.model_selection.cross_val_score(
        LogisticRegression(solver="liblinear", max_iter=3000), X, y, cv=2
    )
    assert _runs(_experiment_id()) == []
    assert cross_val_score is not sklearn.model_selection.cross_val_score  # patched by autolog


# --- options ------------------------------------------------------------------------------


def test_disable_restores_the_original_methods(
    autolog: str, breast_cancer: tuple[np.ndarray, np.ndarray]
) -> None:
    import sklearn.metrics

    def predict_fn() -> Any:  # Pipeline.predict is an available_if descriptor around fn
        return inspect.getattr_static(Pipeline, "predict").fn

    originals = (LogisticRegression.fit, predict_fn(), sklearn.metrics.accuracy_score)
    steppe.sklearn.autolog()
    assert LogisticRegression.fit is not originals[0]
    assert "score" in LogisticRegression.__dict__
    assert sklearn.metrics.accuracy_score is not originals[2]
    assert predict_fn() is not originals[1]
    steppe.sklearn.autolog(disable=True)
    assert LogisticRegression.__dict__["fit"] is originals[0]
    assert "score" not in LogisticRegression.__dict__  # inherited again, not left as a copy
    assert (LogisticRegression.fit, predict_fn(), sklearn.metrics.accuracy_score) == originals
    assert not autologging.is_enabled()
    X, y = breast_cancer
    LogisticRegression(solver="liblinear", max_iter=3000).fit(X, y)
    assert steppe.active_run() is None
    assert _runs(_experiment_id()) == []


def test_exclusive_leaves_user_runs_alone(
    autolog: str, breast_cancer: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = breast_cancer
    steppe.sklearn.autolog(log_models=False, exclusive=True)
    with steppe.start_run() as run:
        LogisticRegression(solver="liblinear", max_iter=3000).fit(X, y)
    data = steppe.get_run(run.info.run_id).data
    assert data.params == {} and data.metrics == {}
    LogisticRegression(solver="liblinear", max_iter=3000).fit(X, y)  # no run: autolog makes its own
    own = steppe.last_active_run()
    assert own is not None and own.info.run_id != run.info.run_id
    assert "training_score" in own.data.metrics


def test_log_models_false_does_not_log_a_model(
    autolog: str, breast_cancer: tuple[np.ndarray, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    X, y = breast_cancer
    steppe.sklearn.autolog(log_models=False)
    with steppe.start_run() as run:
        LogisticRegression(solver="liblinear", max_iter=3000).fit(X, y)
    assert not any("model" in w for w in _warnings(caplog))
    got = _mlflow(autolog).get_run(run.info.run_id)
    assert got.outputs is None or got.outputs.model_outputs == []


@needs_flavor
def test_the_model_is_a_logged_model_named_model(
    autolog: str, breast_cancer: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = breast_cancer
    steppe.sklearn.autolog()
    with steppe.start_run() as run:
        LogisticRegression(solver="liblinear", max_iter=3000).fit(X, y)
    client = _mlflow(autolog)
    outputs = client.get_run(run.info.run_id).outputs.model_outputs
    assert len(outputs) == 1
    logged = client.get_logged_model(outputs[0].model_id)
    assert logged.name == "model" and logged.source_run_id == run.info.run_id
    assert logged.params["max_iter"] == "3000"


def test_a_logging_failure_never_breaks_fit_and_is_warned_once(
    autolog: str, breast_cancer: tuple[np.ndarray, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    X, y = breast_cancer
    steppe.sklearn.autolog(log_models=False)
    with steppe.start_run() as run:
        steppe.log_param("C", "user's own")  # autolog's C=1.0 then conflicts: MLflow refuses
        first = LogisticRegression(solver="liblinear", max_iter=3000).fit(X, y)
        second = LogisticRegression(solver="liblinear", max_iter=3000).fit(X, y)
    assert first.score(X, y) > 0.9 and second.score(X, y) > 0.9  # fit's result, unchanged
    failures = [w for w in _warnings(caplog) if "could not log params:" in w]
    assert len(failures) == 1, _warnings(caplog)
    assert "InvalidParameterValue" in failures[0] and "C" in failures[0], failures[0]
    # The rest of the logging still happened.
    assert "training_score" in steppe.get_run(run.info.run_id).data.metrics


def test_silent_suppresses_the_warning(
    autolog: str, breast_cancer: tuple[np.ndarray, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    X, y = breast_cancer
    steppe.sklearn.autolog(log_models=False, silent=True)
    with steppe.start_run():
        steppe.log_param("C", "user's own")
        LogisticRegression(solver="liblinear", max_iter=3000).fit(X, y)
    assert _warnings(caplog) == []


def test_bad_options_are_refused_with_the_field() -> None:
    with pytest.raises(InvalidParameterValue, match="max_tuning_runs"):
        steppe.sklearn.autolog(max_tuning_runs=-1)
    with pytest.raises(InvalidParameterValue, match="serialization_format"):
        steppe.sklearn.autolog(serialization_format="json")
    with pytest.raises(InvalidParameterValue, match="exclude_flavors"):
        steppe.autolog(exclude_flavors=["tensorflow"])
    assert not autologging.is_enabled()


def test_steppe_autolog_enables_sklearn(
    autolog: str, breast_cancer: tuple[np.ndarray, np.ndarray]
) -> None:
    steppe.autolog(log_models=False)
    assert autologging.is_enabled()
    X, y = breast_cancer
    LogisticRegression(solver="liblinear", max_iter=3000).fit(X, y)
    run = steppe.last_active_run()
    assert run is not None and run.data.tags["mlflow.autologging"] == "sklearn"
    steppe.autolog(disable=True)
    assert not autologging.is_enabled()
    steppe.autolog(exclude_flavors=["sklearn"])
    assert not autologging.is_enabled()


# --- post-training metrics ----------------------------------------------------------------


def test_post_training_metrics_are_named_after_the_callers_variables(
    autolog: str, breast_cancer: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    import sklearn.metrics

    X, y = breast_cancer
    X_train, y_train, X_test, y_test = X[:400], y[:400], X[400:], y[400:]
    steppe.sklearn.autolog(log_models=False)
    with steppe.start_run() as run:
        model = LogisticRegression(solver="liblinear", max_iter=3000).fit(X_train, y_train)
        score = model.score(X_test, y_test)
        predicted = model.predict(X_test)
        accuracy = sklearn.metrics.accuracy_score(y_test, predicted)
        again = sklearn.metrics.accuracy_score(y_test, predicted)
    metrics = steppe.get_run(run.info.run_id).data.metrics
    assert metrics["LogisticRegression_score_X_test"] == pytest.approx(score)
    assert metrics["accuracy_score_X_test"] == pytest.approx(accuracy)
    assert metrics["accuracy_score-2_X_test"] == pytest.approx(again)
    # The training metrics were computed inside fit: no post-training metric for them.
    assert not any(k.endswith("_X_train") for k in metrics)
    client = _mlflow(autolog)
    path = client.download_artifacts(run.info.run_id, "metric_info.json", str(tmp_path))
    info = json.loads(Path(path).read_text())
    assert info["accuracy_score_X_test"] == "accuracy_score(y_true=y_test, y_pred=predicted)"
    assert info["LogisticRegression_score_X_test"] == "LogisticRegression.score(X=X_test, y=y_test)"


def test_post_training_metrics_off(
    autolog: str, breast_cancer: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = breast_cancer
    steppe.sklearn.autolog(log_models=False, log_post_training_metrics=False)
    with steppe.start_run() as run:
        model = LogisticRegression(solver="liblinear", max_iter=3000).fit(X, y)
        model.score(X, y)
    assert not any("_score_" in k for k in steppe.get_run(run.info.run_id).data.metrics)


# --- steppe.data --------------------------------------------------------------------------


def test_datasets_match_mlflows_description(breast_cancer: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = breast_cancer
    ours = steppe.data.from_numpy(X, targets=y, source="s3://bucket/train.npz").to_dict()
    theirs = mlflow.data.from_numpy(X, targets=y, source="s3://bucket/train.npz").to_dict()
    assert ours == theirs
    named = {"a": X, "b": y.astype("int32")}
    assert (
        steppe.data.from_numpy(named, name="n").to_dict()["schema"]
        == (mlflow.data.from_numpy(named, name="n").to_dict()["schema"])
    )
    df = pd.DataFrame(X[:, :3], columns=["a", "b", "c"]).assign(label=y, kind="x")
    ours = steppe.data.from_pandas(df, source="data/train.csv", targets="label").to_dict()
    with warnings.catch_warnings():  # mlflow warns that several source types could match
        warnings.simplefilter("ignore")
        theirs = mlflow.data.from_pandas(df, source="data/train.csv", targets="label").to_dict()
    assert ours == theirs


def test_bad_datasets_are_refused_with_the_field() -> None:
    with pytest.raises(InvalidParameterValue, match="features"):
        steppe.data.from_numpy([[1.0, 2.0]])
    with pytest.raises(InvalidParameterValue, match="targets"):
        steppe.data.from_pandas(pd.DataFrame({"a": [1]}), targets="label")
    with pytest.raises(InvalidParameterValue, match="source"):
        steppe.data.from_numpy(np.zeros(2), source="ftp://host/file")
    with pytest.raises(InvalidParameterValue, match="dataset"):
        steppe.log_input({"name": "x"})  # type: ignore[arg-type]


def test_log_input_is_read_back_by_mlflow(tracking: str) -> None:
    X = np.arange(12.0).reshape(4, 3)
    dataset = steppe.data.from_numpy(X, source="data/x.npy", name="tiny")
    with steppe.start_run() as run:
        steppe.log_input(dataset, context="validation", tags={"split": "a"})
    got = _mlflow(tracking).get_run(run.info.run_id).inputs.dataset_inputs
    assert len(got) == 1
    assert got[0].dataset.name == "tiny"
    assert got[0].dataset.digest == dataset.digest
    assert got[0].dataset.source_type == "local"
    assert {(t.key, t.value) for t in got[0].tags} == {
        ("mlflow.data.context", "validation"),
        ("split", "a"),
    }


def test_fit_predict_is_logged_once_without_labels(
    autolog: str, breast_cancer: tuple[np.ndarray, np.ndarray]
) -> None:
    from sklearn.cluster import KMeans

    X, _ = breast_cancer
    steppe.sklearn.autolog(log_models=False)
    labels = KMeans(n_clusters=2, n_init=2, random_state=0).fit_predict(X)
    assert labels.shape == (569,)
    runs = _runs(_experiment_id())
    assert len(runs) == 1  # fit_predict calls fit: still one run
    run = runs[0]
    assert run.data.tags["estimator_name"] == "KMeans"
    assert run.data.params["n_clusters"] == "2"
    assert not any(k.startswith("training_") for k in run.data.metrics)  # no labels, no metrics
    assert "estimator.html" in _artifacts(_mlflow(autolog), run.info.run_id)


def test_plots_leave_the_users_pyplot_state_alone(
    autolog: str, breast_cancer: tuple[np.ndarray, np.ndarray]
) -> None:
    import matplotlib.pyplot as plt

    X, y = breast_cancer
    steppe.sklearn.autolog(log_models=False)
    mine = plt.figure()
    try:
        with steppe.start_run() as run:
            LogisticRegression(solver="liblinear").fit(X, y)
        assert plt.gcf() is mine and plt.get_fignums() == [mine.number]
    finally:
        plt.close(mine)
    assert "training_confusion_matrix.png" in _artifacts(_mlflow(autolog), run.info.run_id)


# --- parity with MLflow's own autolog ------------------------------------------------------

#: The same fits under either tool's autolog (a regressor, a pipeline with post-training
#: metrics, a grid search); prints the runs' params, metric keys, tags, artifacts and children.
PARITY = textwrap.dedent(
    """
    import json, logging, sys, warnings

    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    tool, uri = sys.argv[1:3]
    if tool == "steppe":
        import steppe as mlflow
        import steppe.sklearn

        client = mlflow.Client(uri)
    else:
        import mlflow
        import mlflow.sklearn

        client = mlflow.MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    import sklearn.metrics
    from sklearn.datasets import load_breast_cancer, load_diabetes
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_breast_cancer(return_X_y=True)
    Xr, yr = load_diabetes(return_X_y=True)
    mlflow.sklearn.autolog(log_models=False)
    SKIP = {"mlflow.runName", "mlflow.user", "mlflow.source.name", "mlflow.source.type",
            "mlflow.source.git.commit", "mlflow.parentRunId"}

    def describe(run_id):
        run = mlflow.get_run(run_id)
        return {
            "params": sorted(run.data.params.items()),
            "metrics": sorted(run.data.metrics),
            "tags": sorted((k, v) for k, v in run.data.tags.items() if k not in SKIP),
            "artifacts": sorted(f.path for f in client.list_artifacts(run_id)),
        }

    out = {}
    with mlflow.start_run() as run:
        Ridge().fit(Xr, yr)
    out["ridge"] = describe(run.info.run_id)
    with mlflow.start_run() as run:
        pipe = Pipeline([("s", StandardScaler()), ("c", LogisticRegression())]).fit(X, y)
        X_test, y_test = X[:100], y[:100]
        pipe.score(X_test, y_test)
        pred = pipe.predict(X_test)
        sklearn.metrics.f1_score(y_test, pred)
        sklearn.metrics.f1_score(y_test, pred)
    out["pipe"] = describe(run.info.run_id)
    grid = {"C": [0.1, 1.0, 10.0]}
    with mlflow.start_run() as run:
        GridSearchCV(LogisticRegression(solver="liblinear"), grid, cv=2).fit(X, y)
    out["grid"] = describe(run.info.run_id)
    children = [
        r for r in client.search_runs([run.info.experiment_id])
        if r.data.tags.get("mlflow.parentRunId") == run.info.run_id
    ]
    out["kids"] = sorted(json.dumps(describe(r.info.run_id)) for r in children)
    print(json.dumps(out))
    """
)


@pytest.mark.timeout(300)
def test_the_same_fits_log_what_mlflows_autolog_logs(
    steppe_server: ServerProcess, tmp_path: Path
) -> None:
    """MLflow's autolog into its sqlite store and steppe's into a steppe server, in two
    processes: the same params (values), metric keys, tags, artifacts and child runs."""

    def logged(tool: str, uri: str) -> Any:
        done = subprocess.run(
            [sys.executable, "-c", PARITY, tool, uri],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=110,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    theirs = logged("mlflow", f"sqlite:///{tmp_path}/mlflow.db")
    ours = logged("steppe", steppe_server.http_url)
    assert theirs["grid"]["metrics"] and len(theirs["kids"]) == 3  # it measured something
    for case in ("ridge", "pipe", "grid"):
        for what in ("params", "metrics", "tags", "artifacts"):
            assert ours[case][what] == theirs[case][what], (case, what)
    assert ours["kids"] == theirs["kids"]
