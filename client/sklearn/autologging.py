"""Autolog for scikit-learn: patches fit/fit_transform/fit_predict to log params, training
metrics, the model and the dataset into the active (or a new) run, and predict/score/
``sklearn.metrics`` for post-training metrics. A logging failure never breaks ``fit``."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from steppe.errors import InvalidParameterValue

__all__ = ["autolog"]

_logger = logging.getLogger("steppe.sklearn")

FLAVOR_NAME = "sklearn"
#: The tag MLflow puts on runs autologging created (and on their child runs).
AUTOLOGGING_TAG = "mlflow.autologging"
TRAINING_PREFIX = "training_"
_FIT_METHODS = ("fit", "fit_transform", "fit_predict")
_PREDICT_METHODS = ("predict", "predict_proba", "transform", "predict_log_proba")
#: Functions of sklearn.model_selection that fit many clones: autolog is off inside them.
_UNLOGGED_APIS = (
    "cross_validate",
    "cross_val_predict",
    "cross_val_score",
    "learning_curve",
    "permutation_test_score",
    "validation_curve",
)
#: Modules of data-preparation steps MLflow does not patch (they are not models).
_EXCLUDED_MODULES = (
    "sklearn.preprocessing",
    "sklearn.impute",
    "sklearn.feature_extraction",
    "sklearn.feature_selection",
)
_EXCLUDED_CLASSES = ("sklearn.compose._column_transformer.ColumnTransformer",)
_NOT_METRICS = ("check_scoring", "get_scorer", "make_scorer", "get_scorer_names")
_INPUT_EXAMPLE_ROWS = 5
_WRAPPED = "__steppe_original__"


@dataclass(frozen=True)
class _Settings:
    log_input_examples: bool
    log_model_signatures: bool
    log_models: bool
    log_datasets: bool
    exclusive: bool
    silent: bool
    max_tuning_runs: int | None
    log_post_training_metrics: bool
    serialization_format: str | None
    registered_model_name: str | None
    pos_label: Any
    extra_tags: dict[str, str]


@dataclass
class _Patch:
    owner: Any
    name: str
    original: Any
    inherited: bool

    def undo(self) -> None:
        if self.inherited:
            delattr(self.owner, self.name)
        else:
            setattr(self.owner, self.name, self.original)


@dataclass
class _Prediction:
    dataset_name: str
    run_id: str
    model_id: str | None


@dataclass
class _Session:
    """One ``autolog()`` call's settings, patches and bookkeeping (until the next call)."""

    settings: _Settings
    patches: list[_Patch] = field(default_factory=list)
    reported: set[str] = field(default_factory=set)
    lock: threading.RLock = field(default_factory=threading.RLock)
    #: > 0 while an outermost fit logs (nested fits, worker threads' fits run unlogged).
    training: int = 0
    #: > 0 inside cross_val_score & co., and while post-training calls run their original.
    quiet: int = 0
    runs: weakref.WeakKeyDictionary[Any, str] = field(default_factory=weakref.WeakKeyDictionary)
    model_ids: weakref.WeakKeyDictionary[Any, str] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    predictions: dict[int, _Prediction] = field(default_factory=dict)
    eval_datasets: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    metric_calls: dict[str, dict[str, list[tuple[str, str]]]] = field(default_factory=dict)
    logged_inputs: set[tuple[str, str, str]] = field(default_factory=set)

    def report(self, what: str, exc: BaseException) -> None:
        """Warn once per session and step that logging failed (unless ``silent``)."""
        with self.lock:
            if what in self.reported:
                return
            self.reported.add(what)
        if not self.settings.silent:
            _logger.warning(
                "steppe autolog could not %s: %s: %s (the model trains as usual; this is "
                "reported once)",
                what,
                type(exc).__name__,
                exc,
            )

    def guard(self, what: str, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except Exception as exc:  # logging must never break the user's fit
            self.report(what, exc)
            return None

    @contextmanager
    def quietly(self) -> Iterator[None]:
        with self.lock:
            self.quiet += 1
        try:
            yield
        finally:
            with self.lock:
                self.quiet -= 1

    def busy(self) -> bool:
        return self.training > 0 or self.quiet > 0


_session: _Session | None = None


def autolog(
    log_input_examples: bool = False,
    log_model_signatures: bool = True,
    log_models: bool = True,
    log_datasets: bool = True,
    disable: bool = False,
    exclusive: bool = False,
    disable_for_unsupported_versions: bool = False,
    silent: bool = False,
    max_tuning_runs: int | None = 5,
    log_post_training_metrics: bool = True,
    serialization_format: str | None = None,
    registered_model_name: str | None = None,
    pos_label: Any = None,
    extra_tags: dict[str, str] | None = None,
) -> None:
    """Enable (or with ``disable=True`` disable) autologging for scikit-learn.

    Each ``fit`` (``fit_transform``, ``fit_predict``) of an estimator then logs, into the
    active run or a run it creates and ends: ``get_params(deep=True)`` as params, training
    metrics (``training_accuracy_score``, ``training_score``, ...), tags ``estimator_name``
    and ``estimator_class``, ``estimator.html``, plots, the training dataset and the model
    (a LoggedModel named ``model``). GridSearchCV/RandomizedSearchCV add ``best_*`` params,
    ``best_cv_score``, a child run per candidate (the best ``max_tuning_runs``) and
    ``cv_results.csv``. Later ``predict``/``score``/``sklearn.metrics`` calls on that model
    log post-training metrics such as ``LogisticRegression_score_X_test``.

    Example::

        steppe.sklearn.autolog()
        with steppe.start_run():
            model = LogisticRegression().fit(X, y)
    """
    global _session
    if max_tuning_runs is not None and (
        not isinstance(max_tuning_runs, int) or max_tuning_runs < 0
    ):
        raise InvalidParameterValue(
            "max_tuning_runs", max_tuning_runs, "must be a non-negative integer or None"
        )
    if extra_tags is not None and not isinstance(extra_tags, Mapping):
        raise InvalidParameterValue(
            "extra_tags", type(extra_tags).__name__, "must be a dict of tag keys and values"
        )
    if serialization_format is not None:
        from steppe.sklearn.flavor import SUPPORTED_SERIALIZATION_FORMATS

        if serialization_format not in SUPPORTED_SERIALIZATION_FORMATS:
            raise InvalidParameterValue(
                "serialization_format",
                serialization_format,
                f"must be one of {SUPPORTED_SERIALIZATION_FORMATS}",
            )
    tags = {str(k): str(v) for k, v in (extra_tags or {}).items()}
    if AUTOLOGGING_TAG in tags:
        del tags[AUTOLOGGING_TAG]
        _logger.warning("extra_tags: %s is set by autolog itself; ignored", AUTOLOGGING_TAG)
    with _patching_lock:
        if _session is not None:
            for patch in reversed(_session.patches):
                patch.undo()
            _session = None
        if disable:
            return
        session = _Session(
            _Settings(
                log_input_examples=log_input_examples,
                log_model_signatures=log_model_signatures,
                log_models=log_models,
                log_datasets=log_datasets,
                exclusive=exclusive,
                silent=silent,
                max_tuning_runs=max_tuning_runs,
                log_post_training_metrics=log_post_training_metrics,
                serialization_format=serialization_format,
                registered_model_name=registered_model_name,
                pos_label=pos_label,
                extra_tags=tags,
            )
        )
        _install(session)
        _session = session


_patching_lock = threading.Lock()


def is_enabled() -> bool:
    """Whether ``autolog()`` is on (and not disabled since)."""
    return _session is not None


# --- patching -------------------------------------------------------------------------------


def estimators_to_patch() -> list[type]:
    """The estimator classes MLflow patches: ``all_estimators()`` plus the search and
    pipeline meta-estimators, without data-preparation steps."""
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV
    from sklearn.pipeline import Pipeline
    from sklearn.utils import all_estimators

    classes = {cls for _, cls in all_estimators()} | {GridSearchCV, RandomizedSearchCV, Pipeline}
    kept = [
        cls
        for cls in classes
        if not cls.__module__.startswith(_EXCLUDED_MODULES)
        and f"{cls.__module__}.{cls.__name__}" not in _EXCLUDED_CLASSES
    ]
    return sorted(kept, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


def _install(session: _Session) -> None:
    import sklearn.metrics
    import sklearn.model_selection

    seen: set[int] = set()
    for cls in estimators_to_patch():
        for name in _FIT_METHODS:
            _patch_method(session, cls, name, _fit_wrapper, seen)
        for name in _PREDICT_METHODS:
            _patch_method(session, cls, name, _predict_wrapper, seen)
        _patch_method(session, cls, "score", _score_wrapper, seen)
    if session.settings.log_post_training_metrics:
        for name in sklearn.metrics.__all__:
            function = getattr(sklearn.metrics, name, None)
            if (
                name in _NOT_METRICS
                or name.startswith("plot_")
                or inspect.isclass(function)
                or not callable(function)
            ):
                continue
            _patch_attribute(session, sklearn.metrics, name, _metric_wrapper(function))
    for name in _UNLOGGED_APIS:
        function = getattr(sklearn.model_selection, name, None)
        if function is not None:
            _patch_attribute(session, sklearn.model_selection, name, _unlogged_wrapper(function))


def _patch_attribute(session: _Session, owner: Any, name: str, replacement: Any) -> None:
    inherited = isinstance(owner, type) and name not in owner.__dict__
    original = owner.__dict__.get(name) if not inherited else None
    setattr(owner, name, replacement)
    session.patches.append(_Patch(owner, name, original, inherited))


def _patch_method(
    session: _Session,
    cls: type,
    name: str,
    make: Callable[[Callable[..., Any], str], Callable[..., Any]],
    seen: set[int],
) -> None:
    try:
        raw = inspect.getattr_static(cls, name)
    except AttributeError:
        return
    if inspect.isfunction(raw):
        original = getattr(raw, _WRAPPED, raw)
        _patch_attribute(session, cls, name, make(original, name))
    elif hasattr(raw, "fn") and hasattr(raw, "check"):
        # sklearn's available_if descriptor (Pipeline.predict, GridSearchCV.predict, ...):
        # one object shared by every subclass; its ``fn`` is what a call runs.
        if id(raw) in seen:
            return
        seen.add(id(raw))
        original = getattr(raw.fn, _WRAPPED, raw.fn)
        raw.fn = make(original, name)
        session.patches.append(_Patch(raw, "fn", original, inherited=False))


def _fit_wrapper(original: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(original)
    def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
        session = _session
        if session is None or session.busy():
            return original(self, *args, **kwargs)
        if session.settings.exclusive and _active_run_id() is not None:
            return original(self, *args, **kwargs)  # a user's run: exclusive leaves it alone
        return _Fit(session, original, self, args, kwargs).run()

    setattr(patched, _WRAPPED, original)
    return patched


def _predict_wrapper(original: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(original)
    def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
        session = _session
        run_id = _run_of(session, self)
        if session is None or run_id is None or session.busy():
            return original(self, *args, **kwargs)
        with session.quietly():
            result = original(self, *args, **kwargs)
        data = _first_argument(original, args, kwargs)
        # Named here, from this frame outwards: the caller's variable (X_test), not ours.
        dataset_name = _dataset_name(session, run_id, data, inspect.currentframe())
        session.guard(
            "record a prediction for post-training metrics",
            lambda: _record_prediction(session, self, run_id, dataset_name, data, result),
        )
        return result

    setattr(patched, _WRAPPED, original)
    return patched


def _score_wrapper(original: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(original)
    def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
        session = _session
        run_id = _run_of(session, self)
        if session is None or run_id is None or session.busy():
            return original(self, *args, **kwargs)
        with session.quietly():
            value = original(self, *args, **kwargs)
        if _loggable(value):
            here = inspect.currentframe()
            data = _first_argument(original, args, kwargs)
            dataset_name = _dataset_name(session, run_id, data, here)
            shown = f"{type(self).__name__}.{original.__name__}"
            call = _call_text(shown, original, args, kwargs, 1, here)
            del here
            metric = f"{type(self).__name__}_score"
            session.guard(
                "log a post-training score",
                lambda: _log_post_training(session, run_id, metric, dataset_name, call, value),
            )
        return value

    setattr(patched, _WRAPPED, original)
    return patched


def _metric_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def patched(*args: Any, **kwargs: Any) -> Any:
        session = _session
        if session is None or session.busy() or not session.predictions:
            return original(*args, **kwargs)
        with session.quietly():
            value = original(*args, **kwargs)
        if _loggable(value):
            found = next(
                (
                    session.predictions[id(arg)]
                    for arg in (*args, *kwargs.values())
                    if arg is not None and id(arg) in session.predictions
                ),
                None,
            )
            if found is not None:
                here = inspect.currentframe()
                call = _call_text(original.__name__, original, args, kwargs, 0, here)
                del here
                session.guard(
                    "log a post-training metric",
                    lambda: _log_post_training(
                        session, found.run_id, original.__name__, found.dataset_name, call, value
                    ),
                )
        return value

    setattr(patched, _WRAPPED, original)
    return patched


def _unlogged_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def patched(*args: Any, **kwargs: Any) -> Any:
        session = _session
        if session is None:
            return original(*args, **kwargs)
        with session.quietly():
            return original(*args, **kwargs)

    setattr(patched, _WRAPPED, original)
    return patched


# --- one logged fit -------------------------------------------------------------------------


class _Fit:
    """An outermost fit: a run if none is active, metadata before, results after."""

    def __init__(
        self,
        session: _Session,
        original: Callable[..., Any],
        estimator: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.session = session
        self.settings = session.settings
        self.original = original
        self.estimator = estimator
        self.args = args
        self.kwargs = kwargs
        self.X: Any = None
        self.y: Any = None
        self.sample_weight: Any = None
        self.dataset: Any = None
        self.model_id: str | None = None

    def run(self) -> Any:
        from steppe import fluent

        session = self.session
        with session.lock:
            session.training += 1
        try:
            managed = None
            if fluent.active_run() is None:
                managed = session.guard("start a run", self._start_run)
            run_id = _active_run_id()
            if run_id is None:  # no run could be started: train unlogged
                return self.original(self.estimator, *self.args, **self.kwargs)
            session.guard("read the training data", self._read_training_data)
            self._log_before(run_id)
            try:
                result = self.original(self.estimator, *self.args, **self.kwargs)
            except BaseException as exc:
                if managed is not None:
                    status = "FAILED" if isinstance(exc, Exception) else "KILLED"
                    session.guard("end the run", lambda: fluent.end_run(status))
                raise
            session.guard("log the results of fit", lambda: self._log_after(run_id))
            if self.settings.log_post_training_metrics:
                session.guard("follow the model's predictions", lambda: self._follow(run_id))
            if managed is not None:
                session.guard("end the run", lambda: fluent.end_run("FINISHED"))
            return result
        finally:
            with session.lock:
                session.training -= 1

    def _start_run(self) -> Any:
        from steppe import fluent

        tags = {**self.settings.extra_tags, AUTOLOGGING_TAG: FLAVOR_NAME}
        run = fluent.start_run(tags=tags)
        _logger.info("steppe autolog created run %s for this fit", run.info.run_id)
        return run

    def _read_training_data(self) -> None:
        from copy import deepcopy

        names = list(inspect.signature(self.original).parameters)[1:]
        values = dict(zip(names, self.args, strict=False)) | self.kwargs
        x_name = names[0] if names else "X"
        y_name = names[1] if len(names) > 1 else "y"
        self.X = deepcopy(values.get(x_name))
        y = values.get(y_name)
        self.y = None if y is None else deepcopy(y)
        self.sample_weight = values.get("sample_weight") if "sample_weight" in names else None
        if self.settings.log_datasets or self.settings.log_post_training_metrics:
            self.dataset = _make_dataset(self.X, self.y)

    def _log_before(self, run_id: str) -> None:
        from steppe import fluent

        session, estimator = self.session, self.estimator
        session.guard(
            "log params",
            lambda: fluent.log_params(estimator.get_params(deep=not _is_search(estimator))),
        )
        session.guard("log tags", lambda: fluent.set_tags(_estimator_tags(estimator)))
        if self.settings.log_datasets and self.dataset is not None:
            self.session.guard(
                "log the training dataset",
                lambda: _log_dataset(self.session, run_id, self.dataset, "train"),
            )

    def _log_after(self, run_id: str) -> None:
        from steppe import fluent

        estimator, session = self.estimator, self.session
        input_example = signature = None
        if self.settings.log_models:
            input_example, signature = self._example_and_signature()
            params = estimator.get_params(deep=not _is_search(estimator))
            params |= {f"best_{k}": v for k, v in getattr(estimator, "best_params_", {}).items()}
            info = session.guard(
                "log the model",
                lambda: self._log_model(estimator, "model", input_example, signature, params),
            )
            if info is not None:
                self.model_id = info.model_id
                session.guard(
                    "remember the model",
                    lambda: session.model_ids.__setitem__(estimator, info.model_id),
                )
        metrics = session.guard("compute training metrics", self._training_metrics) or {}
        if metrics:
            session.guard("log training metrics", lambda: fluent.log_metrics(metrics))
        elif self.y is None:
            _logger.info("steppe autolog: no labels given to fit, so no training metrics")
        session.guard("log the training plots", lambda: self._log_plots(run_id))
        session.guard("log estimator.html", lambda: _log_estimator_html(run_id, estimator))
        if _is_search(estimator):
            self._log_search(run_id, input_example, signature)

    def _example_and_signature(self) -> tuple[Any, Any]:
        from copy import deepcopy

        example = self.session.guard(
            "take an input example", lambda: deepcopy(self.X[:_INPUT_EXAMPLE_ROWS])
        )
        signature = None
        if self.settings.log_model_signatures and example is not None:
            signature = self.session.guard(
                "infer the model signature", lambda: self._infer(example)
            )
        return (example if self.settings.log_input_examples else None), signature

    def _infer(self, example: Any) -> Any:
        from copy import deepcopy

        from steppe.models import infer_signature  # type: ignore[attr-defined,unused-ignore]

        estimator = self.estimator
        with self.session.quietly():
            if hasattr(estimator, "predict"):
                output = estimator.predict(deepcopy(example))
            elif hasattr(estimator, "transform"):
                output = estimator.transform(deepcopy(example))
            else:
                raise TypeError("the model has no predict or transform to infer a signature")
        return infer_signature(example, output)

    def _log_model(
        self, model: Any, name: str, example: Any, signature: Any, params: dict[str, Any]
    ) -> Any:
        from steppe.sklearn import flavor

        kwargs: dict[str, Any] = {
            "name": name,
            "signature": signature,
            "input_example": example,
            "params": params,
        }
        if self.settings.serialization_format is not None:
            kwargs["serialization_format"] = self.settings.serialization_format
        if name == "model" and self.settings.registered_model_name is not None:
            kwargs["registered_model_name"] = self.settings.registered_model_name
        with self.session.quietly():
            return flavor.log_model(model, **kwargs)

    def _training_metrics(self) -> dict[str, float]:
        if self.y is None:
            return {}
        with self.session.quietly():
            metrics = _estimator_metrics(
                self.session, self.estimator, self.X, self.y, self.sample_weight
            )
        return metrics

    def _log_plots(self, run_id: str) -> None:
        from sklearn.base import is_classifier

        if self.y is None or not is_classifier(self.estimator):
            return
        try:
            import matplotlib
        except ImportError:
            _logger.info("steppe autolog: matplotlib is not installed, so no training plots")
            return
        del matplotlib  # drawn without pyplot: no backend is chosen or changed
        from steppe import fluent

        with tempfile.TemporaryDirectory(prefix="steppe-autolog-") as folder:
            with self.session.quietly():
                written = _draw_classifier_plots(
                    self.session, self.estimator, self.X, self.y, self.sample_weight, Path(folder)
                )
            if written:
                fluent.log_artifacts(folder)

    def _log_search(self, run_id: str, example: Any, signature: Any) -> None:
        from steppe import fluent

        estimator, session = self.estimator, self.session
        best_params = None
        best_model_id = None
        if hasattr(estimator, "best_estimator_") and self.settings.log_models:
            best_params = estimator.best_estimator_.get_params(deep=True)
            info = session.guard(
                "log the best estimator",
                lambda: self._log_model(
                    estimator.best_estimator_, "best_estimator", example, signature, best_params
                ),
            )
            best_model_id = None if info is None else info.model_id
        if hasattr(estimator, "best_score_"):
            session.guard(
                "log best_cv_score",
                lambda: fluent.log_metrics({"best_cv_score": float(estimator.best_score_)}),
            )
        if hasattr(estimator, "best_params_"):
            session.guard(
                "log the best params",
                lambda: fluent.log_params(
                    {f"best_{k}": v for k, v in estimator.best_params_.items()}
                ),
            )
        if hasattr(estimator, "cv_results_"):
            session.guard(
                "create child runs for the search candidates",
                lambda: _child_runs(self, run_id, best_params, best_model_id),
            )
            session.guard("log cv_results.csv", lambda: _log_cv_results(estimator))

    def _follow(self, run_id: str) -> None:
        self.session.runs[self.estimator] = run_id


# --- what a fit logs --------------------------------------------------------------------------


def _estimator_tags(estimator: Any) -> dict[str, str]:
    cls = type(estimator)
    return {"estimator_name": cls.__name__, "estimator_class": f"{cls.__module__}.{cls.__name__}"}


def _is_search(estimator: Any) -> bool:
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV

    return isinstance(estimator, GridSearchCV | RandomizedSearchCV)


def _estimator_metrics(
    session: _Session, estimator: Any, X: Any, y: Any, sample_weight: Any
) -> dict[str, float]:
    """MLflow's training metrics: classifier or regressor metrics, then ``score``."""
    import numpy as np
    import sklearn.metrics as m
    from sklearn.base import is_classifier, is_regressor

    metrics: dict[str, float] = {}

    def add(name: str, compute: Callable[[], Any]) -> None:
        value = session.guard(f"compute {TRAINING_PREFIX}{name}", compute)
        if _loggable(value):
            metrics[TRAINING_PREFIX + name] = float(value)

    weights = {"sample_weight": sample_weight}
    if is_classifier(estimator):
        pos_label = session.settings.pos_label
        average = "weighted" if pos_label is None else "binary"
        predicted = estimator.predict(X)
        labels = {"pos_label": pos_label, "average": average, **weights}
        for name, function in (
            ("precision_score", m.precision_score),
            ("recall_score", m.recall_score),
            ("f1_score", m.f1_score),
        ):
            add(name, functools.partial(function, y, predicted, **labels))
        add("accuracy_score", lambda: m.accuracy_score(y, predicted, normalize=True, **weights))
        if hasattr(estimator, "predict_proba"):
            proba = estimator.predict_proba(X)
            add("log_loss", lambda: m.log_loss(y, proba, **weights))
            scores = proba[:, 1] if proba.shape[1] == 2 else proba
            add(
                "roc_auc",
                lambda: m.roc_auc_score(
                    y, scores, average="weighted", multi_class="ovo", **weights
                ),
            )
    elif is_regressor(estimator):
        predicted = estimator.predict(X)
        each = {"multioutput": "uniform_average", **weights}
        add("mean_squared_error", lambda: m.mean_squared_error(y, predicted, **each))
        add("mean_absolute_error", lambda: m.mean_absolute_error(y, predicted, **each))
        add("r2_score", lambda: m.r2_score(y, predicted, **each))
        mse = metrics.get(TRAINING_PREFIX + "mean_squared_error")
        if mse is not None:
            metrics[TRAINING_PREFIX + "root_mean_squared_error"] = float(np.sqrt(mse))
    if hasattr(estimator, "score"):
        takes_weight = "sample_weight" in inspect.signature(estimator.score).parameters
        add(
            "score",
            lambda: estimator.score(X, y, sample_weight) if takes_weight else estimator.score(X, y),
        )
    return metrics


def _draw_classifier_plots(
    session: _Session, estimator: Any, X: Any, y: Any, sample_weight: Any, folder: Path
) -> int:
    """MLflow's training plots: the normalized confusion matrix, and for two classes the
    ROC and precision-recall curves. Returns how many PNG files were written.

    Drawn on bare ``Figure`` objects, never through pyplot: the user's backend, open
    windows and current figure stay as they were."""
    import matplotlib
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

    classes = getattr(estimator, "classes_", None)
    count = len(classes) if classes is not None else len(set(y))
    weights = {"sample_weight": sample_weight}
    confusion_style: Any = {
        "font.size": min(8.0, 50.0 / max(count, 1)),
        "axes.labelsize": 8.0,
        "figure.dpi": 175,
    }
    plots: list[tuple[str, Callable[[Any], Any], str, Any, tuple[float, float] | None]] = [
        (
            "confusion_matrix",
            lambda ax: ConfusionMatrixDisplay.from_estimator(
                estimator, X, y, normalize="true", cmap="Blues", ax=ax, **weights
            ),
            "Normalized confusion matrix",
            confusion_style,
            (6.0, 4.0),
        )
    ]
    if len(set(y)) == 2:
        plots += [
            (
                "roc_curve",
                lambda ax: RocCurveDisplay.from_estimator(estimator, X, y, ax=ax, **weights),
                "ROC curve",
                {},
                None,
            ),
            (
                "precision_recall_curve",
                lambda ax: PrecisionRecallDisplay.from_estimator(estimator, X, y, ax=ax, **weights),
                "Precision recall curve",
                {},
                None,
            ),
        ]
    written = 0
    # MLflow's style without its figure.autolayout: that extra layout pass cost 40 of each
    # plot's ~95 ms of savefig (measured), and at this size nothing is clipped without it.
    style: Any = {"savefig.dpi": 175, "font.size": 8}
    for name, draw, title, extra, size in plots:

        def one(
            name: str = name,
            draw: Callable[[Any], Any] = draw,
            title: str = title,
            extra: Any = extra,
            size: tuple[float, float] | None = size,
        ) -> bool:
            with matplotlib.rc_context(style), matplotlib.rc_context(extra):
                figure = Figure(figsize=size)
                display = draw(figure.add_subplot(1, 1, 1))
                display.ax_.set_title(title)
                figure.savefig(folder / f"{TRAINING_PREFIX}{name}.png", format="png")
            return True

        if session.guard(f"draw {TRAINING_PREFIX}{name}.png", one):
            written += 1
    return written


def _log_estimator_html(run_id: str, estimator: Any) -> None:
    from sklearn.utils import estimator_html_repr

    from steppe import fluent

    html = (
        '<!DOCTYPE html>\n<html lang="en">\n  <head>\n    <meta charset="UTF-8"/>\n  </head>\n'
        f"  <body>\n    {estimator_html_repr(estimator)}\n  </body>\n</html>\n"
    )
    fluent.log_text(html, "estimator.html", run_id=run_id)


def _make_dataset(X: Any, y: Any) -> Any:
    """The training or evaluation data as a ``steppe.data.Dataset`` (None for types MLflow
    does not describe either)."""
    import numpy as np

    from steppe import data

    try:
        import pandas as pd  # type: ignore[import-untyped,unused-ignore]  # optional
    except ImportError:  # pandas is optional: then only numpy data is described
        pd = None
    if pd is not None and isinstance(X, pd.DataFrame):
        return data.from_pandas(X)
    if hasattr(X, "toarray") and hasattr(X, "nnz"):  # a scipy sparse matrix
        X = X.toarray()
        if y is not None and hasattr(y, "toarray"):
            y = y.toarray()
    if isinstance(X, np.ndarray):
        if y is not None and not isinstance(y, np.ndarray | dict):
            y = np.asarray(y)
        return data.from_numpy(X, targets=y)
    return None


def _log_dataset(session: _Session, run_id: str, dataset: Any, context: str) -> None:
    from steppe.tracking import Client

    key = (run_id, dataset.digest, context)
    with session.lock:
        if key in session.logged_inputs:
            return
        session.logged_inputs.add(key)
    Client().log_inputs(run_id, [dataset.to_input(context)])


def _child_runs(
    fit: _Fit, parent_run_id: str, best_params: dict[str, Any] | None, best_model_id: str | None
) -> None:
    """One finished child run per search candidate (the best ``max_tuning_runs`` by rank),
    with the seed estimator's params overridden by the candidate's and its cv_results_."""
    from numbers import Number

    import pandas as pd  # type: ignore[import-untyped,unused-ignore]  # optional

    from steppe import data, fluent
    from steppe.entities import Param
    from steppe.tracking import Client, now_ms

    search = fit.estimator
    parent = fluent.active_run()
    assert parent is not None
    client = Client(parent._tracking_uri)
    seed = search.estimator
    base = seed.get_params(deep=not _is_search(seed))
    results = pd.DataFrame.from_dict(search.cv_results_)
    limit = fit.settings.max_tuning_runs
    if limit is not None:
        rank = "rank_test_score"
        if rank not in results.columns:
            rank = next((c for c in results.columns if "rank_test_" in c), rank)
        results = results.nsmallest(limit, rank)
        _logger.info(
            "steppe autolog: child runs for the %d best of %d candidates",
            len(results),
            len(search.cv_results_["params"]),
        )
    tags = {
        **fit.settings.extra_tags,
        **data.code_source().spec["tags"],
        AUTOLOGGING_TAG: FLAVOR_NAME,
        "mlflow.parentRunId": parent_run_id,
        **_estimator_tags(seed),
    }
    start = parent.info.start_time
    end = now_ms()
    children = []
    for _, row in results.iterrows():
        child = client.create_run(parent.info.experiment_id, start_time=start, tags=tags)
        child_id = child.info.run_id
        params = dict(base) | dict(row.get("params", {}))
        client.log_batch(child_id, params=[Param(k, v) for k, v in params.items()])
        for key, value in row.items():
            key = str(key)
            if key.startswith(("param", "split")) or not isinstance(value, Number):
                continue
            client.log_metric(child_id, key, float(value), timestamp=end)  # type: ignore[arg-type]
        if fit.dataset is not None:
            client.log_inputs(child_id, [fit.dataset.to_input("train")])
        children.append(child_id)
    # Every point is queued first: the first end waits for all of them at once.
    for child_id in children:
        client.set_terminated(child_id, "FINISHED", end_time=end)


def _log_cv_results(search: Any) -> None:
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]  # optional

    from steppe import fluent

    with tempfile.TemporaryDirectory(prefix="steppe-autolog-") as folder:
        path = Path(folder) / "cv_results.csv"
        pd.DataFrame.from_dict(search.cv_results_).to_csv(path, index=False)
        fluent.log_artifact(path)


# --- post-training metrics ------------------------------------------------------------------


def _run_of(session: _Session | None, model: Any) -> str | None:
    if session is None:
        return None
    try:
        return session.runs.get(model)
    except TypeError:  # an estimator that cannot be weakly referenced is never followed
        return None


def _loggable(value: Any) -> bool:
    import numpy as np

    return isinstance(value, int | float | np.number) and not isinstance(value, bool | np.bool_)


def _first_argument(
    function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if args:
        return args[0]
    names = list(inspect.signature(function).parameters)
    return kwargs.get(names[1]) if len(names) > 1 else None


def _variable_name(value: Any, fallback: str, frame: FrameType | None) -> str:
    """The name the caller's code gives ``value``: walks out from ``frame`` (a wrapper's)
    past the frames that got it as an argument (sklearn's delegation) to the first that
    holds it as a local. Never raises: the fallback stands in."""
    if value is None:
        return fallback
    try:
        while frame is not None:
            info = inspect.getargvalues(frame)
            passed = [info.locals[name] for name in info.args]
            if info.varargs:
                passed += list(info.locals[info.varargs])
            if info.keywords:
                passed += list(info.locals[info.keywords].values())
            if any(value is arg for arg in passed):
                frame = frame.f_back
                continue
            for name, local in frame.f_locals.items():
                if local is value:
                    return str(name)
            return fallback
        return fallback
    except Exception:  # frame introspection is best effort: a name is a nicety
        return fallback
    finally:
        del frame


def _dataset_name(session: _Session, run_id: str, data: Any, frame: FrameType | None) -> str:
    """The evaluation data's variable name, with ``-2``, ``-3`` ... for other objects that
    have the same name in this run (MLflow's naming)."""
    name = _variable_name(data, "unknown_dataset", frame)
    with session.lock:
        ids = session.eval_datasets.setdefault((run_id, name), [])
        if id(data) not in ids:
            ids.append(id(data))
        index = ids.index(id(data))
    return name if index == 0 else f"{name}-{index + 1}"


def _record_prediction(
    session: _Session, model: Any, run_id: str, dataset_name: str, data: Any, result: Any
) -> None:
    key = id(result)
    session.predictions[key] = _Prediction(dataset_name, run_id, session.model_ids.get(model))
    # A result that cannot be weakly referenced (a float) stays until autolog is called again.
    with contextlib.suppress(TypeError):
        weakref.finalize(result, session.predictions.pop, key, None)
    if session.settings.log_datasets:
        dataset = _make_dataset(data, None)
        if dataset is not None:
            _log_dataset(session, run_id, dataset, "eval")


def _call_text(
    shown: str,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    skip: int,
    frame: FrameType | None,
) -> str:
    """MLflow's metric_info.json entry: ``accuracy_score(y_true=y_test, y_pred=pred)``."""
    import numpy as np

    def text(value: Any) -> str:
        if value is None or np.isscalar(value):
            if isinstance(value, str) and len(value) > 32:
                return repr(value[:32] + "...")
            return repr(value)
        return _variable_name(value, f"<{type(value).__name__}>", frame)

    try:
        names = list(inspect.signature(function).parameters)[skip:]
    except (TypeError, ValueError):  # no signature (a C function): positions stand in
        names = [f"arg{i}" for i in range(len(args))]
    parts = [f"{n}={text(a)}" for n, a in zip(names, args, strict=False)]
    parts += [f"{n}={text(a)}" for n, a in kwargs.items()]
    return f"{shown}({', '.join(parts)})"


def _log_post_training(
    session: _Session, run_id: str, metric: str, dataset_name: str, call: str, value: Any
) -> None:
    """Log ``<metric>[-<n>]_<dataset>`` (each call its own key) and rewrite metric_info.json."""
    from steppe.tracking import Client

    with session.lock:
        calls = session.metric_calls.setdefault(run_id, {}).setdefault(metric, [])
        index = len(calls)
        key = f"{metric if index == 0 else f'{metric}-{index + 1}'}_{dataset_name}"
        calls.append((key, call))
        every = sorted(c for cs in session.metric_calls[run_id].values() for c in cs)
    client = Client()
    client.log_metric(run_id, key, float(value))  # buffered: the streaming path
    client.log_dict(run_id, dict(every), "metric_info.json")


def _active_run_id() -> str | None:
    from steppe import fluent

    run = fluent.active_run()
    return None if run is None else run.info.run_id
