"""The sklearn flavor: save, log and load scikit-learn estimators in MLflow's model format
(``loader_module: mlflow.sklearn``, so MLflow loads them too). skops by default, as MLflow 3;
pickle and cloudpickle on request, and then loading needs the pickle opt-in."""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from steppe.errors import InvalidParameterValue, MlflowException
from steppe.models.model import (
    MLMODEL_FILE_NAME,
    Model,
    ModelInfo,
    folder_size,
    pinned,
    save_input_example,
    write_environment,
)
from steppe.models.signature import ModelSignature, infer_signature
from steppe.models.uris import log as _log
from steppe.models.uris import resolve

FLAVOR_NAME = "sklearn"
SERIALIZATION_FORMAT_SKOPS = "skops"
SERIALIZATION_FORMAT_PICKLE = "pickle"
SERIALIZATION_FORMAT_CLOUDPICKLE = "cloudpickle"
SUPPORTED_SERIALIZATION_FORMATS = [
    SERIALIZATION_FORMAT_SKOPS,
    SERIALIZATION_FORMAT_PICKLE,
    SERIALIZATION_FORMAT_CLOUDPICKLE,
]
_PICKLE_FILE = "model.pkl"
_SKOPS_FILE = "model.skops"
_LOADER_MODULE = "mlflow.sklearn"

_logger = logging.getLogger("steppe.sklearn")


def _check_format(serialization_format: str) -> str:
    if serialization_format not in SUPPORTED_SERIALIZATION_FORMATS:
        raise InvalidParameterValue(
            "serialization_format",
            serialization_format,
            f"must be one of {SUPPORTED_SERIALIZATION_FORMATS}",
        )
    return serialization_format


def get_default_pip_requirements(
    include_cloudpickle: bool = False, include_skops: bool = True
) -> list[str]:
    """What loading the model needs: scikit-learn and its serializer, pinned to the
    installed versions; plus mlflow, whose ``mlflow.sklearn`` is the loader MLflow's
    serving tools call."""
    names = ["mlflow", "scikit-learn"]
    if include_cloudpickle:
        names.append("cloudpickle")
    if include_skops:
        names.append("skops")
    return pinned(names)


def save_model(
    sk_model: Any,
    path: str | os.PathLike[str],
    conda_env: Any = None,
    code_paths: Sequence[str] | None = None,
    mlflow_model: Model | None = None,
    serialization_format: str = SERIALIZATION_FORMAT_SKOPS,
    signature: ModelSignature | bool | None = None,
    input_example: Any = None,
    pip_requirements: Sequence[str] | str | None = None,
    extra_pip_requirements: Sequence[str] | str | None = None,
    pyfunc_predict_fn: str = "predict",
    metadata: Mapping[str, Any] | None = None,
    skops_trusted_types: Sequence[str] | None = None,
) -> None:
    """Save ``sk_model`` into the folder ``path`` (must not exist or be empty).

    Example::

        steppe.sklearn.save_model(model, "my_model", input_example=X[:5])
    """
    import sklearn

    from steppe.pyfunc import _copy_code, _prepare, add_to_model

    if conda_env is not None:
        raise InvalidParameterValue("conda_env", "...", "is not supported: use pip_requirements")
    fmt = _check_format(serialization_format or SERIALIZATION_FORMAT_SKOPS)
    if fmt != SERIALIZATION_FORMAT_SKOPS:
        _logger.warning(
            "Saving scikit-learn models with %s: loading them runs code from the file, and "
            "needs STEPPE_ALLOW_PICKLE_DESERIALIZATION=true. 'skops' is the safe default.",
            fmt,
        )
    target = Path(path)
    _prepare(target)
    model = mlflow_model or Model()
    code = _copy_code(code_paths, target)
    example = save_input_example(model, input_example, target)
    if signature is None and example is not None:
        try:
            output = getattr(sk_model, pyfunc_predict_fn)(example)
        except Exception:  # MLflow too: an example the model cannot predict gets inputs only
            output = None
        signature = infer_signature(example, output)
    if isinstance(signature, ModelSignature):
        model.signature = signature
    if metadata is not None:
        model.metadata = dict(metadata)
    data_file = _SKOPS_FILE if fmt == SERIALIZATION_FORMAT_SKOPS else _PICKLE_FILE
    _dump(sk_model, target / data_file, fmt)
    if hasattr(sk_model, pyfunc_predict_fn):
        add_to_model(
            model,
            loader_module=_LOADER_MODULE,
            model_path=data_file,
            code=code,
            conda_env="conda.yaml",
            python_env="python_env.yaml",
            predict_fn=pyfunc_predict_fn,
        )
    else:
        _logger.warning(
            "Model has no %s method: not adding the python_function flavor", pyfunc_predict_fn
        )
    model.add_flavor(
        FLAVOR_NAME,
        pickled_model=data_file,
        sklearn_version=sklearn.__version__,
        serialization_format=fmt,
        code=code,
        skops_trusted_types=list(skops_trusted_types) if skops_trusted_types else None,
    )
    model.model_size_bytes = folder_size(target)
    model.save(target / MLMODEL_FILE_NAME)
    defaults = get_default_pip_requirements(
        include_cloudpickle=fmt == SERIALIZATION_FORMAT_CLOUDPICKLE,
        include_skops=fmt == SERIALIZATION_FORMAT_SKOPS,
    )
    write_environment(target, defaults, pip_requirements, extra_pip_requirements)


def _dump(sk_model: Any, path: Path, fmt: str) -> None:
    if fmt == SERIALIZATION_FORMAT_SKOPS:
        import skops.io

        skops.io.dump(sk_model, str(path))
    elif fmt == SERIALIZATION_FORMAT_CLOUDPICKLE:
        import cloudpickle

        with open(path, "wb") as f:
            cloudpickle.dump(sk_model, f)
    else:
        with open(path, "wb") as f:
            pickle.dump(sk_model, f, protocol=pickle.DEFAULT_PROTOCOL)


def log_model(
    sk_model: Any,
    name: str | None = None,
    code_paths: Sequence[str] | None = None,
    serialization_format: str = SERIALIZATION_FORMAT_SKOPS,
    registered_model_name: str | None = None,
    signature: ModelSignature | bool | None = None,
    input_example: Any = None,
    pip_requirements: Sequence[str] | str | None = None,
    extra_pip_requirements: Sequence[str] | str | None = None,
    pyfunc_predict_fn: str = "predict",
    metadata: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    model_type: str | None = None,
    step: int = 0,
    model_id: str | None = None,
    skops_trusted_types: Sequence[str] | None = None,
    artifact_path: str | None = None,
) -> ModelInfo:
    """Log ``sk_model`` as a LoggedModel (MLflow 3) of the active run, or of no run when
    none is active; ``registered_model_name`` also registers it.

    Example::

        info = steppe.sklearn.log_model(model, name="model", input_example=X[:5])
        steppe.sklearn.load_model(info.model_uri).predict(X)
    """

    def save(local: Path, model: Model) -> None:
        save_model(
            sk_model,
            local,
            code_paths=code_paths,
            mlflow_model=model,
            serialization_format=serialization_format,
            signature=signature,
            input_example=input_example,
            pip_requirements=pip_requirements,
            extra_pip_requirements=extra_pip_requirements,
            pyfunc_predict_fn=pyfunc_predict_fn,
            metadata=metadata,
            skops_trusted_types=skops_trusted_types,
        )

    return _log(
        name,
        save,
        registered_model_name=registered_model_name,
        params=params,
        tags=tags,
        model_type=model_type,
        step=step,
        model_id=model_id,
        artifact_path=artifact_path,
    )


def _load_from_folder(folder: Path) -> Any:
    conf = Model.load(folder).flavors.get(FLAVOR_NAME)
    if conf is None:
        raise MlflowException(
            f'Model does not have the "{FLAVOR_NAME}" flavor', error_code="RESOURCE_DOES_NOT_EXIST"
        )
    fmt = _check_format(str(conf.get("serialization_format", SERIALIZATION_FORMAT_PICKLE)))
    data = folder / str(conf["pickled_model"])
    if fmt == SERIALIZATION_FORMAT_SKOPS:
        import skops.io

        # The trusted-type list comes from the model's own MLmodel file, so a crafted model
        # could trust anything: honour it only with the pickle opt-in; otherwise skops'
        # defaults (scikit-learn's own types) decide.
        from skops.io.exceptions import UntrustedTypesFoundException

        from steppe import config

        listed = conf.get("skops_trusted_types") if config.allow_pickle_deserialization() else None
        try:
            return skops.io.load(str(data), trusted=list(listed) if listed else None)
        except UntrustedTypesFoundException as exc:
            raise MlflowException(
                f"Refusing to load {data}: skops found types it does not trust ({exc}). "
                "If you trust this model, set STEPPE_ALLOW_PICKLE_DESERIALIZATION=true and "
                "save it with skops_trusted_types listing them.",
                error_code="INVALID_PARAMETER_VALUE",
            ) from None
    from steppe.pyfunc import require_pickle_opt_in

    require_pickle_opt_in(f"the scikit-learn model at {folder}")
    with open(data, "rb") as f:
        if fmt == SERIALIZATION_FORMAT_CLOUDPICKLE:
            import cloudpickle

            return cloudpickle.load(f)
        return pickle.load(f)  # opted in above


def load_model(
    model_uri: str | os.PathLike[str], dst_path: str | os.PathLike[str] | None = None
) -> Any:
    """The scikit-learn estimator at ``model_uri`` (``models:/<id>``, ``models:/name/1``,
    ``models:/name@alias``, ``runs:/<run>/model`` or a local folder)."""
    return _load_from_folder(resolve(str(model_uri), dst_path))


class _SklearnPyfunc:
    """python_function over an estimator: ``predict`` (or the saved predict_fn)."""

    def __init__(self, estimator: Any, predict_fn: str) -> None:
        self.raw_model = estimator
        self._predict = getattr(estimator, predict_fn)

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        del params
        return self._predict(data)


def _load_pyfunc(path: Path) -> _SklearnPyfunc:
    folder = path.parent if path.is_file() else path
    estimator = _load_from_folder(folder)
    conf = Model.load(folder).flavors.get("python_function", {})
    return _SklearnPyfunc(estimator, str(conf.get("predict_fn", "predict")))
