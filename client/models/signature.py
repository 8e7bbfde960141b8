"""Model signatures in MLflow's JSON form (column and tensor schemas), inferred from data and
enforced on predict. Needs numpy; pandas only when the data is a DataFrame."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from steppe.errors import MlflowException

#: MLflow's column types and the numpy dtype each reads as.
_NUMPY_OF_TYPE = {
    "boolean": "bool",
    "integer": "int32",
    "long": "int64",
    "float": "float32",
    "double": "float64",
    "string": "object",
    "binary": "object",
    "datetime": "datetime64[ns]",
}


def _type_of_dtype(dtype: Any) -> str:
    """MLflow's column type for a numpy/pandas dtype (raises for those it has none for)."""
    import numpy as np

    kind = np.dtype(dtype) if not hasattr(dtype, "kind") else dtype
    if kind.kind == "b":
        return "boolean"
    if kind.kind in "iu":
        return "integer" if kind.itemsize <= 4 and kind.kind == "i" else "long"
    if kind.kind == "f":
        return "float" if kind.itemsize <= 4 else "double"
    if kind.kind in "OUS":
        return "binary" if kind.kind == "S" else "string"
    if kind.kind == "M":
        return "datetime"
    raise MlflowException(f"Unsupported type {dtype} in model input/output: no MLflow column type")


def _type_of_value(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bytes | bytearray):
        return "binary"
    import numpy as np

    if isinstance(value, np.generic):
        return _type_of_dtype(value.dtype)
    raise MlflowException(f"Unsupported value of type {type(value).__name__} in model input/output")


@dataclass(frozen=True)
class ColSpec:
    """One named (or unnamed) column of a column-based schema."""

    type: str
    name: str | None = None
    required: bool = True

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.name is not None:
            out["name"] = self.name
        out["required"] = self.required
        return out


@dataclass(frozen=True)
class TensorSpec:
    """A tensor input/output: numpy dtype name and shape (-1 for a variable dimension)."""

    dtype: str
    shape: tuple[int, ...]
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name is not None:
            out["name"] = self.name
        out["type"] = "tensor"
        out["tensor-spec"] = {"dtype": self.dtype, "shape": list(self.shape)}
        return out


@dataclass(frozen=True)
class ParamSpec:
    """An inference parameter with its default, as in MLflow's ``params`` schema."""

    name: str
    type: str
    default: Any
    shape: tuple[int, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        shape = list(self.shape) if self.shape is not None else None
        return {"name": self.name, "default": self.default, "shape": shape, "type": self.type}


@dataclass(frozen=True)
class Schema:
    """A list of ColSpec (column-based) or of TensorSpec (tensor-based), never mixed."""

    inputs: tuple[ColSpec | TensorSpec, ...]

    def __post_init__(self) -> None:
        kinds = {type(i) for i in self.inputs}
        if len(kinds) > 1:
            raise MlflowException("A schema holds either columns or tensors, not both")

    def is_tensor_spec(self) -> bool:
        return bool(self.inputs) and isinstance(self.inputs[0], TensorSpec)

    def input_names(self) -> list[str | None]:
        return [i.name for i in self.inputs]

    def to_json(self) -> str:
        return json.dumps([i.to_dict() for i in self.inputs])

    @classmethod
    def from_json(cls, text: str) -> Schema:
        items: list[ColSpec | TensorSpec] = []
        for raw in json.loads(text):
            if raw.get("type") == "tensor":
                spec = raw["tensor-spec"]
                items.append(TensorSpec(spec["dtype"], tuple(spec["shape"]), raw.get("name")))
            else:
                items.append(
                    ColSpec(str(raw["type"]), raw.get("name"), bool(raw.get("required", True)))
                )
        return cls(tuple(items))


@dataclass(frozen=True)
class ModelSignature:
    """What a model takes and returns: ``inputs``/``outputs`` schemas and ``params``."""

    inputs: Schema | None = None
    outputs: Schema | None = None
    params: tuple[ParamSpec, ...] | None = field(default=None)

    def to_dict(self) -> dict[str, str | None]:
        """MLflow's MLmodel form: each part a JSON string (or None)."""
        return {
            "inputs": self.inputs.to_json() if self.inputs else None,
            "outputs": self.outputs.to_json() if self.outputs else None,
            "params": json.dumps([p.to_dict() for p in self.params]) if self.params else None,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ModelSignature:
        params = None
        if raw.get("params"):
            params = tuple(
                ParamSpec(
                    p["name"],
                    p["type"],
                    p.get("default"),
                    tuple(p["shape"]) if p.get("shape") else None,
                )
                for p in json.loads(raw["params"])
            )
        return cls(
            Schema.from_json(raw["inputs"]) if raw.get("inputs") else None,
            Schema.from_json(raw["outputs"]) if raw.get("outputs") else None,
            params,
        )


def _is_dataframe(data: Any) -> bool:
    return type(data).__name__ == "DataFrame" and type(data).__module__.startswith("pandas")


def _is_series(data: Any) -> bool:
    return type(data).__name__ == "Series" and type(data).__module__.startswith("pandas")


def _column_type(values: Any) -> str:
    """A pandas column's type; object columns by their first non-null value."""
    if values.dtype.kind == "O":
        sample = values.dropna()
        return _type_of_value(sample.iloc[0]) if len(sample) else "string"
    return _type_of_dtype(values.dtype)


def infer_schema(data: Any) -> Schema:
    """The schema of a DataFrame, Series, numpy array, dict of arrays, list of dicts or
    scalar list, as MLflow infers it."""
    import numpy as np

    if _is_dataframe(data):
        return Schema(tuple(ColSpec(_column_type(data[c]), str(c)) for c in data.columns))
    if _is_series(data):
        name = None if data.name is None else str(data.name)
        return Schema((ColSpec(_column_type(data), name),))
    if isinstance(data, np.ndarray):
        return Schema((TensorSpec(data.dtype.name, (-1, *data.shape[1:])),))
    if isinstance(data, Mapping):
        items: list[ColSpec | TensorSpec] = []
        for name, value in data.items():
            if isinstance(value, np.ndarray):
                items.append(TensorSpec(value.dtype.name, (-1, *value.shape[1:]), str(name)))
            else:
                items.append(ColSpec(_type_of_value(value), str(name)))
        return Schema(tuple(items))
    if isinstance(data, Sequence) and not isinstance(data, str | bytes) and data:
        first = data[0]
        if isinstance(first, Mapping):
            return Schema(tuple(ColSpec(_type_of_value(v), str(k)) for k, v in first.items()))
        return Schema((ColSpec(_type_of_value(first)),))
    if isinstance(data, str | bytes | int | float | bool):
        return Schema((ColSpec(_type_of_value(data)),))
    raise MlflowException(
        f"Cannot infer a schema from {type(data).__name__}: use a pandas DataFrame or Series, "
        "a numpy array, a dict of arrays or a list of dicts"
    )


def infer_signature(
    model_input: Any = None, model_output: Any = None, params: Mapping[str, Any] | None = None
) -> ModelSignature:
    """The signature of a model from an input example and (optionally) its predictions.

    Example::

        signature = steppe.models.infer_signature(X_train, model.predict(X_train))
    """
    params_schema = None
    if params:
        params_schema = tuple(
            ParamSpec(str(k), _type_of_value(v), v.item() if hasattr(v, "item") else v)
            for k, v in params.items()
        )
    return ModelSignature(
        infer_schema(model_input) if model_input is not None else None,
        infer_schema(model_output) if model_output is not None else None,
        params_schema,
    )


# -- enforcement -------------------------------------------------------------------------------


def _safe_cast(values: Any, want: str, column: str) -> Any:
    import numpy as np

    have = values.dtype
    if want in ("string", "binary"):
        if have.kind in "OUS":
            return values
    elif want == "datetime":
        if have.kind == "M":
            return values
    else:
        target = np.dtype(_NUMPY_OF_TYPE[want])
        if have == target:
            return values
        if have.kind != "O" and np.can_cast(have, target, casting="safe"):
            return values.astype(target)
        # MLflow lets integer columns through where floats are expected: ints up to 2^53 fit.
        if have.kind in "iu" and target.kind == "f":
            return values.astype(target)
    raise MlflowException(
        f"Incompatible input types for column {column}. Can not safely convert {have} to "
        f"{_NUMPY_OF_TYPE.get(want, want)}.",
        error_code="INVALID_PARAMETER_VALUE",
    )


def enforce_schema(data: Any, schema: Schema) -> Any:
    """``data`` checked against (and safely cast to) ``schema``, as PyFuncModel.predict does:
    a clear MlflowException naming the column or tensor that does not fit."""
    import numpy as np

    if schema.is_tensor_spec():
        spec = schema.inputs[0]
        assert isinstance(spec, TensorSpec)
        if len(schema.inputs) > 1 or spec.name is not None:
            return data  # named multi-tensor inputs: passed through unchecked
        array = data.to_numpy() if _is_dataframe(data) else np.asarray(data)
        if array.ndim != len(spec.shape) or any(
            want != -1 and have != want for have, want in zip(array.shape, spec.shape, strict=False)
        ):
            raise MlflowException(
                f"Shape of input {array.shape} does not match expected shape {tuple(spec.shape)}",
                error_code="INVALID_PARAMETER_VALUE",
            )
        target = np.dtype(spec.dtype)
        if array.dtype != target:
            if not np.can_cast(array.dtype, target, casting="same_kind"):
                raise MlflowException(
                    f"dtype of input {array.dtype} does not match expected dtype {target}",
                    error_code="INVALID_PARAMETER_VALUE",
                )
            array = array.astype(target)
        return array
    import pandas as pd

    if isinstance(data, Mapping):
        frame = pd.DataFrame({k: v if hasattr(v, "__len__") else [v] for k, v in data.items()})
    elif isinstance(data, list) and data and isinstance(data[0], Mapping):
        frame = pd.DataFrame(data)
    elif _is_dataframe(data):
        frame = data
    elif isinstance(data, np.ndarray) and data.ndim == 2:
        frame = pd.DataFrame(data)
    else:
        frame = pd.DataFrame({0: data}) if _is_series(data) or isinstance(data, list) else data
    names = schema.input_names()
    if all(n is None for n in names):
        if frame.shape[1] != len(names):
            raise MlflowException(
                f"Model is missing inputs: the schema has {len(names)} unnamed column(s), "
                f"the input has {frame.shape[1]}",
                error_code="INVALID_PARAMETER_VALUE",
            )
        named = frame.copy()
        for i, spec in enumerate(schema.inputs):
            assert isinstance(spec, ColSpec)
            named.iloc[:, i] = _safe_cast(frame.iloc[:, i], spec.type, str(i))
        return named
    missing = [
        n
        for n, s in zip(names, schema.inputs, strict=True)
        if n not in frame.columns and isinstance(s, ColSpec) and s.required
    ]
    if missing:
        raise MlflowException(
            f"Model is missing inputs {missing}. Note that there were extra inputs: "
            f"{[c for c in frame.columns if c not in names]}",
            error_code="INVALID_PARAMETER_VALUE",
        )
    out = {}
    for spec in schema.inputs:
        assert isinstance(spec, ColSpec) and spec.name is not None
        if spec.name in frame.columns:
            out[spec.name] = _safe_cast(frame[spec.name], spec.type, spec.name)
    return pd.DataFrame(out, index=frame.index)
