"""steppe.pyfunc: the generic ``python_function`` flavor, in MLflow's format.

    class AddN(steppe.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input + 1

    info = steppe.pyfunc.log_model(name="add", python_model=AddN(), input_example=df)
    steppe.pyfunc.load_model(info.model_uri).predict(df)

Models saved here load with ``mlflow.pyfunc.load_model`` and the other way round. Loading a
cloudpickled Python model runs code from the model: it needs
STEPPE_ALLOW_PICKLE_DESERIALIZATION=true (or MLflow's MLFLOW_ALLOW_PICKLE_DESERIALIZATION).
"""

from __future__ import annotations

import importlib
import inspect
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from steppe import config
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
from steppe.models.signature import ModelSignature, enforce_schema, infer_signature
from steppe.models.uris import log as _log
from steppe.models.uris import resolve

FLAVOR_NAME = "python_function"
MAIN = "loader_module"
CODE = "code"
DATA = "data"
ENV = "env"
PY_VERSION = "python_version"
_PYTHON_MODEL_FILE = "python_model.pkl"
_STEPPE_PYTHON_MODEL_LOADER = "mlflow.pyfunc.model"

__all__ = [
    "FLAVOR_NAME",
    "PyFuncModel",
    "PythonModel",
    "PythonModelContext",
    "add_to_model",
    "get_model_dependencies",
    "load_model",
    "log_model",
    "save_model",
]


class _TypeHints(NamedTuple):
    input: Any
    output: Any


class PythonModelContext:
    """What ``PythonModel.load_context`` gets: local paths of the model's ``artifacts``."""

    def __init__(
        self, artifacts: Mapping[str, str], model_config: Mapping[str, Any] | None
    ) -> None:
        self.artifacts = dict(artifacts)
        self.model_config = dict(model_config or {})


class PythonModel:
    """Subclass and implement ``predict(context, model_input, params=None)``; optionally
    ``load_context(context)`` to read artifacts once when the model loads."""

    def load_context(self, context: PythonModelContext) -> None:
        """Called once when the model is loaded."""

    @property
    def predict_type_hints(self) -> _TypeHints:
        """What mlflow's loader asks of a Python model: no type-hint conversion (steppe
        checks inputs against the signature instead)."""
        return _TypeHints(None, None)

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        raise NotImplementedError("PythonModel subclasses implement predict()")


def require_pickle_opt_in(what: str) -> None:
    """Refuse to unpickle (which runs the model file's code) unless the user opted in."""
    if not config.allow_pickle_deserialization():
        raise MlflowException(
            f"Refusing to load {what}: it is serialized with pickle/cloudpickle, and loading it "
            "can run arbitrary code from the model's files. Load only models you trust, and "
            "opt in with STEPPE_ALLOW_PICKLE_DESERIALIZATION=true (or MLflow's "
            "MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true); sklearn models saved with "
            "serialization_format='skops' (the default) need no opt-in.",
            error_code="INVALID_PARAMETER_VALUE",
        )


class PyFuncModel:
    """A loaded model: ``predict`` checks the input against the signature first."""

    def __init__(self, model_meta: Model, implementation: Any, model_path: Path) -> None:
        self._meta = model_meta
        self._impl = implementation
        self._path = model_path

    @property
    def metadata(self) -> Model:
        return self._meta

    @property
    def model_id(self) -> str | None:
        return self._meta.model_id

    @property
    def loader_module(self) -> str:
        return str(self._meta.flavors[FLAVOR_NAME][MAIN])

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """Predictions for ``data``, which must fit the model's input schema (a clear
        MlflowException names the missing or mistyped column otherwise)."""
        signature = self._meta.signature
        if signature is not None and signature.inputs is not None:
            data = enforce_schema(data, signature.inputs)
        if signature is not None and signature.params:
            merged = {p.name: p.default for p in signature.params}
            unknown = set(params or {}) - set(merged)
            if unknown:
                raise MlflowException(
                    f"Unrecognized params {sorted(unknown)}: the model's signature has "
                    f"{sorted(merged)}",
                    error_code="INVALID_PARAMETER_VALUE",
                )
            params = {**merged, **(params or {})}
        if params and "params" in inspect.signature(self._impl.predict).parameters:
            return self._impl.predict(data, params=params)
        return self._impl.predict(data)

    def unwrap_python_model(self) -> Any:
        """The PythonModel inside a custom model (MLflow's name)."""
        inner = getattr(self._impl, "python_model", None)
        if inner is None:
            raise MlflowException("This model is not a custom PythonModel")
        return inner

    def get_raw_model(self) -> Any:
        return getattr(self._impl, "raw_model", self._impl)

    def __repr__(self) -> str:
        flavors = ", ".join(sorted(self._meta.flavors))
        return f"<PyFuncModel {self._meta.model_id or self._path} flavors: {flavors}>"


class _PythonModelWrapper:
    def __init__(self, python_model: Any, context: PythonModelContext) -> None:
        self.python_model = python_model
        self._context = context
        # predict(context, model_input, params=None), or MLflow 3's predict(model_input, params)
        names = list(inspect.signature(python_model.predict).parameters)
        self._takes_context = names[:1] == ["context"] or (len(names) >= 2 and names[1] != "params")

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        if self._takes_context:
            return self.python_model.predict(self._context, data, params=params)
        return self.python_model.predict(data, params=params)


def _load_python_model(path: Path, model_config: Mapping[str, Any] | None) -> _PythonModelWrapper:
    conf = Model.load(path).flavors[FLAVOR_NAME]
    if "model_code_path" in conf:
        raise MlflowException(
            "models-from-code are not loaded by steppe yet: use mlflow.pyfunc.load_model"
        )
    require_pickle_opt_in(f"the Python model at {path}")
    import cloudpickle

    with open(path / conf.get("python_model", _PYTHON_MODEL_FILE), "rb") as f:
        python_model = cloudpickle.load(f)
    artifacts = {
        name: str(path / info["path"]) for name, info in (conf.get("artifacts") or {}).items()
    }
    context = PythonModelContext(artifacts, model_config or conf.get("model_config"))
    python_model.load_context(context)
    return _PythonModelWrapper(python_model, context)


def _loader(module: str) -> Callable[[Path, Mapping[str, Any] | None], Any]:
    """The function that turns a model folder into something with ``predict``: steppe's own
    for the flavors it writes; otherwise the module's ``_load_pyfunc`` (mlflow.<flavor>,
    when mlflow is installed: the documented path for every other flavor)."""
    if module in (_STEPPE_PYTHON_MODEL_LOADER, "steppe.pyfunc.model"):
        return _load_python_model
    if module in ("mlflow.sklearn", "steppe.sklearn"):
        from steppe.sklearn.flavor import _load_pyfunc

        return lambda path, _config: _load_pyfunc(path)
    try:
        imported = importlib.import_module(module)
    except ImportError as exc:
        raise MlflowException(
            f"This model's loader module {module!r} is not installed: steppe loads sklearn "
            "and custom Python models itself; for other flavors install mlflow and use "
            "mlflow.pyfunc.load_model (or steppe.pyfunc, which calls the same loader)."
        ) from exc
    return lambda path, _config: imported._load_pyfunc(str(path))


def load_model(
    model_uri: str | os.PathLike[str],
    suppress_warnings: bool = False,
    dst_path: str | os.PathLike[str] | None = None,
    model_config: Mapping[str, Any] | None = None,
) -> PyFuncModel:
    """Load any model with a python_function flavor from a URI (``models:/<id>``,
    ``models:/name/1``, ``models:/name@alias``, ``runs:/<run>/model``) or a local path."""
    del suppress_warnings
    local = resolve(str(model_uri), dst_path)
    meta = Model.load(local)
    conf = meta.flavors.get(FLAVOR_NAME)
    if conf is None:
        raise MlflowException(
            f'Model does not have the "{FLAVOR_NAME}" flavor', error_code="RESOURCE_DOES_NOT_EXIST"
        )
    code = conf.get(CODE)
    if code:
        sys.path.insert(0, str(local / code))
    data_path = local / conf[DATA] if DATA in conf else local
    implementation = _loader(str(conf[MAIN]))(data_path, model_config)
    return PyFuncModel(meta, implementation, local)


def add_to_model(
    model: Model,
    loader_module: str,
    data: str | None = None,
    code: str | None = None,
    conda_env: str | None = None,
    python_env: str | None = None,
    model_config: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Model:
    """Add the python_function flavor to ``model`` (MLflow's fields)."""
    import platform

    params: dict[str, Any] = dict(kwargs)
    params[MAIN] = loader_module
    params[PY_VERSION] = platform.python_version()
    if data is not None:
        params[DATA] = data
    if code is not None:
        params[CODE] = code
    if conda_env or python_env:
        params[ENV] = {"conda": conda_env, "virtualenv": python_env}
    if model_config:
        params["model_config"] = dict(model_config)
    return model.add_flavor(FLAVOR_NAME, **params)


def _prepare(path: Path) -> None:
    if path.exists() and any(path.iterdir()):
        raise MlflowException(
            f"Path '{path}' already exists and is not empty", error_code="RESOURCE_ALREADY_EXISTS"
        )
    path.mkdir(parents=True, exist_ok=True)


def _copy_code(code_paths: Sequence[str] | None, path: Path) -> str | None:
    if not code_paths:
        return None
    target = path / "code"
    target.mkdir()
    for item in code_paths:
        source = Path(item)
        if source.is_dir():
            shutil.copytree(source, target / source.name)
        else:
            shutil.copy2(source, target / source.name)
    return "code"


def save_model(
    path: str | os.PathLike[str],
    loader_module: str | None = None,
    data_path: str | None = None,
    code_paths: Sequence[str] | None = None,
    conda_env: Any = None,
    mlflow_model: Model | None = None,
    python_model: Any = None,
    artifacts: Mapping[str, str] | None = None,
    signature: ModelSignature | bool | None = None,
    input_example: Any = None,
    pip_requirements: Sequence[str] | str | None = None,
    extra_pip_requirements: Sequence[str] | str | None = None,
    metadata: Mapping[str, Any] | None = None,
    model_config: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> None:
    """Save a custom ``python_model`` (a PythonModel, cloudpickled) with its ``artifacts``
    (name -> local file or folder, copied into the model) in MLflow's format."""
    if conda_env is not None:
        raise InvalidParameterValue("conda_env", "...", "is not supported: use pip_requirements")
    if python_model is None:
        raise InvalidParameterValue(
            "python_model",
            None,
            "is required (steppe saves custom Python models; loader_module/data_path models "
            "are MLflow 1.x style: use mlflow.pyfunc for them)",
        )
    if loader_module is not None or data_path is not None:
        raise InvalidParameterValue(
            "loader_module", loader_module, "cannot be given with python_model"
        )
    if not callable(getattr(python_model, "predict", None)):
        raise InvalidParameterValue(
            "python_model", type(python_model).__name__, "must have a predict method"
        )
    import cloudpickle

    target = Path(path)
    _prepare(target)
    model = mlflow_model or Model()
    code = _copy_code(code_paths, target)
    saved_artifacts: dict[str, dict[str, str]] = {}
    for name, source in (artifacts or {}).items():
        origin = Path(source)
        if not origin.exists():
            raise InvalidParameterValue(f"artifacts[{name!r}]", source, "does not exist")
        relative = Path("artifacts") / origin.name
        (target / "artifacts").mkdir(exist_ok=True)
        if origin.is_dir():
            shutil.copytree(origin, target / relative)
        else:
            shutil.copy2(origin, target / relative)
        saved_artifacts[name] = {"path": relative.as_posix(), "uri": str(source)}
    with open(target / _PYTHON_MODEL_FILE, "wb") as f:
        cloudpickle.dump(python_model, f)
    example = save_input_example(model, input_example, target)
    if signature is None and example is not None:
        context = PythonModelContext(
            {n: str(target / a["path"]) for n, a in saved_artifacts.items()}, model_config
        )
        try:
            python_model.load_context(context)
            output = _PythonModelWrapper(python_model, context).predict(example)
        except Exception:  # MLflow too: a model that cannot run its example gets inputs only
            output = None
        signature = infer_signature(example, output)
    if isinstance(signature, ModelSignature):
        model.signature = signature
    if metadata is not None:
        model.metadata = dict(metadata)
    add_to_model(
        model,
        loader_module=_STEPPE_PYTHON_MODEL_LOADER,
        code=code,
        conda_env="conda.yaml",
        python_env="python_env.yaml",
        model_config=model_config,
        python_model=_PYTHON_MODEL_FILE,
        cloudpickle_version=cloudpickle.__version__,
        artifacts=saved_artifacts or None,
        streamable=False,
        **kwargs,
    )
    model.model_size_bytes = folder_size(target)
    model.save(target / MLMODEL_FILE_NAME)
    write_environment(
        target, pinned(["mlflow", "cloudpickle"]), pip_requirements, extra_pip_requirements
    )


def log_model(
    name: str | None = None,
    python_model: Any = None,
    artifacts: Mapping[str, str] | None = None,
    code_paths: Sequence[str] | None = None,
    registered_model_name: str | None = None,
    signature: ModelSignature | bool | None = None,
    input_example: Any = None,
    pip_requirements: Sequence[str] | str | None = None,
    extra_pip_requirements: Sequence[str] | str | None = None,
    metadata: Mapping[str, Any] | None = None,
    model_config: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    model_type: str | None = None,
    step: int = 0,
    model_id: str | None = None,
    artifact_path: str | None = None,
) -> ModelInfo:
    """Log a custom PythonModel as a LoggedModel of the active run (MLflow 3 semantics);
    returns where it went (``info.model_uri`` is ``models:/<model_id>``)."""

    def save(local: Path, model: Model) -> None:
        save_model(
            local,
            python_model=python_model,
            artifacts=artifacts,
            code_paths=code_paths,
            mlflow_model=model,
            signature=signature,
            input_example=input_example,
            pip_requirements=pip_requirements,
            extra_pip_requirements=extra_pip_requirements,
            metadata=metadata,
            model_config=model_config,
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


def get_model_dependencies(model_uri: str, format: str = "pip") -> str:
    """The local path of the model's requirements.txt (``format="pip"``)."""
    if format != "pip":
        raise InvalidParameterValue("format", format, "only 'pip' is supported")
    local = resolve(model_uri)
    return str(local / "requirements.txt")
