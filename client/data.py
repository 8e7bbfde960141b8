"""``steppe.data``: datasets a run read (MLflow's ``mlflow.data``), as DatasetInput JSON.

A ``Dataset`` carries a name, an 8-character digest (MLflow's algorithm, so the same data
gets the same digest in both), a source, a schema and a profile; it never uploads the data.

    dataset = steppe.data.from_numpy(X, targets=y, source="s3://bucket/train.npz")
    steppe.log_input(dataset, context="train")
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from steppe import validation
from steppe.errors import InvalidParameterValue

__all__ = [
    "Dataset",
    "DatasetSource",
    "code_source",
    "from_numpy",
    "from_pandas",
    "log_input",
]

#: The tag MLflow's UI reads for a dataset's role in a run ("train", "eval", ...).
DATASET_CONTEXT_TAG = "mlflow.data.context"
#: MLflow hashes at most this many rows (or flattened values) of a dataset.
_MAX_ROWS = 10000
#: URI schemes and the source_type MLflow gives them.
_SCHEME_TYPES = {
    "s3": "s3",
    "s3a": "s3",
    "s3n": "s3",
    "http": "http",
    "https": "http",
    "gs": "gcs",
    "file": "local",
}


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset came from: ``source_type`` ("code", "local", "s3", "http", ...)
    and its JSON description (``{"uri": ...}``, or the code's tags)."""

    source_type: str
    spec: Mapping[str, Any]

    def to_json(self) -> str:
        return json.dumps(dict(self.spec))

    @staticmethod
    def resolve(source: str | os.PathLike[str] | DatasetSource | None) -> DatasetSource:
        """A source from a URI or path; ``None`` means the code that is running."""
        if source is None:
            return code_source()
        if isinstance(source, DatasetSource):
            return source
        uri = os.fspath(source)
        if not isinstance(uri, str) or not uri:
            raise InvalidParameterValue("source", source, "must be a non-empty URI or path")
        scheme = urlparse(uri).scheme.lower()
        if not scheme or len(scheme) == 1:  # a relative path, or a Windows drive letter
            return DatasetSource("local", {"uri": uri})
        if scheme not in _SCHEME_TYPES:
            raise InvalidParameterValue(
                "source", uri, f"scheme must be one of {sorted(_SCHEME_TYPES)} or a local path"
            )
        return DatasetSource(_SCHEME_TYPES[scheme], {"uri": uri})


def code_source() -> DatasetSource:
    """The running script as a source, with the tags MLflow puts on it."""
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "-"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers): MLflow leaves it unknown too
        user = "unknown"
    tags = {"mlflow.user": user, "mlflow.source.name": script, "mlflow.source.type": "LOCAL"}
    return DatasetSource("code", {"tags": tags})


@dataclass(frozen=True)
class Dataset:
    """A dataset's description as MLflow's ``Dataset`` entity: every field is a string,
    ``schema`` and ``profile`` are JSON texts."""

    name: str
    digest: str
    source: DatasetSource
    schema: str | None = None
    profile: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def source_type(self) -> str:
        return self.source.source_type

    def to_dict(self) -> dict[str, str]:
        """MLflow's ``Dataset`` message (the ``dataset`` of a DatasetInput) as JSON."""
        out = {
            "name": self.name,
            "digest": self.digest,
            "source_type": self.source.source_type,
            "source": self.source.to_json(),
        }
        if self.schema is not None:
            out["schema"] = self.schema
        if self.profile is not None:
            out["profile"] = self.profile
        return out

    def to_input(
        self, context: str | None = None, tags: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """The DatasetInput JSON ``/runs/log-inputs`` takes (``context`` becomes the tag
        ``mlflow.data.context``)."""
        all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
        if context is not None:
            all_tags[DATASET_CONTEXT_TAG] = str(context)
        return {
            "dataset": self.to_dict(),
            "tags": [{"key": k, "value": v} for k, v in all_tags.items()],
        }


# --- numpy ----------------------------------------------------------------------------------


def from_numpy(
    features: Any,
    source: str | os.PathLike[str] | DatasetSource | None = None,
    targets: Any = None,
    name: str | None = None,
    digest: str | None = None,
) -> Dataset:
    """A dataset of numpy features (an array or a dict of named arrays), optional targets.

    Example::

        dataset = steppe.data.from_numpy(X, targets=y, name="breast_cancer")
    """
    import numpy as np

    def check(value: Any, what: str) -> None:
        arrays = value.values() if isinstance(value, Mapping) else [value]
        for array in arrays:
            if not isinstance(array, np.ndarray):
                raise InvalidParameterValue(
                    what, type(array).__name__, "must be a numpy array or a dict of numpy arrays"
                )

    check(features, "features")
    if targets is not None:
        check(targets, "targets")
    schema = {
        "mlflow_tensorspec": {
            "features": json.dumps(_tensor_specs(features)),
            "targets": None if targets is None else json.dumps(_tensor_specs(targets)),
        }
    }
    profile = {
        "features_shape": _attribute(features, "shape"),
        "features_size": _attribute(features, "size"),
        "features_nbytes": _attribute(features, "nbytes"),
    }
    if targets is not None:
        profile |= {
            "targets_shape": _attribute(targets, "shape"),
            "targets_size": _attribute(targets, "size"),
            "targets_nbytes": _attribute(targets, "nbytes"),
        }
    return Dataset(
        name=_name(name),
        digest=digest or _numpy_digest(features, targets),
        source=DatasetSource.resolve(source),
        schema=json.dumps(schema),
        profile=json.dumps(profile),
    )


def _attribute(value: Any, name: str) -> Any:
    def one(array: Any) -> Any:
        got = getattr(array, name)
        return list(got) if isinstance(got, tuple) else int(got)

    if isinstance(value, Mapping):
        return {key: one(array) for key, array in value.items()}
    return one(value)


def _tensor_specs(value: Any) -> list[dict[str, Any]]:
    def spec(array: Any) -> dict[str, Any]:
        shape = [-1, *array.shape[1:]] if array.ndim else []
        return {"dtype": str(array.dtype), "shape": [int(x) for x in shape]}

    if isinstance(value, Mapping):
        return [
            {"name": str(key), "type": "tensor", "tensor-spec": spec(array)}
            for key, array in value.items()
        ]
    return [{"type": "tensor", "tensor-spec": spec(value)}]


def _numpy_digest(features: Any, targets: Any) -> str:
    import numpy as np
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]  # optional

    elements: list[Any] = []

    def add(array: Any) -> None:
        head = array.flatten()[:_MAX_ROWS]
        try:
            elements.append(pd.util.hash_array(head))
        except TypeError:  # unhashable dtypes (object arrays of lists): their size stands in
            elements.append(np.int64(head.size))
        elements.extend(np.int64(x) for x in array.shape)

    for item in (features, targets):
        if item is None:
            continue
        if isinstance(item, Mapping):
            for key in sorted(item):
                add(item[key])
        else:
            add(item)
    return _md5(elements)


def _md5(elements: list[Any]) -> str:
    md5 = hashlib.md5(usedforsecurity=False)
    for element in elements:
        md5.update(element)
    return md5.hexdigest()[:8]


# --- pandas ---------------------------------------------------------------------------------

#: numpy dtype kinds/names and MLflow's column types.
_COLUMN_TYPES = {
    "float64": "double",
    "float32": "float",
    "int64": "long",
    "int32": "integer",
    "int16": "integer",
    "int8": "integer",
    "uint8": "integer",
    "uint16": "integer",
    "uint32": "long",
    "bool": "boolean",
}


def from_pandas(
    df: Any,
    source: str | os.PathLike[str] | DatasetSource | None = None,
    targets: str | None = None,
    name: str | None = None,
    digest: str | None = None,
    predictions: str | None = None,
) -> Dataset:
    """A dataset of a pandas DataFrame; ``targets``/``predictions`` name its columns.

    Example::

        dataset = steppe.data.from_pandas(df, source="data/train.csv", targets="label")
    """
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]  # optional

    if not isinstance(df, pd.DataFrame):
        raise InvalidParameterValue("df", type(df).__name__, "must be a pandas DataFrame")
    for what, column in (("targets", targets), ("predictions", predictions)):
        if column is not None and column not in df.columns:
            raise InvalidParameterValue(what, column, "must name a column of the DataFrame")
    columns = [
        {"type": _column_type(df[column]), "name": str(column), "required": True}
        for column in df.columns
    ]
    profile = {"num_rows": len(df), "num_elements": int(df.size)}
    extra = {k: v for k, v in (("targets", targets), ("predictions", predictions)) if v}
    return Dataset(
        name=_name(name),
        digest=digest or _pandas_digest(df),
        source=DatasetSource.resolve(source),
        schema=json.dumps({"mlflow_colspec": columns}),
        profile=json.dumps(profile),
        extra=extra,
    )


def _column_type(column: Any) -> str:
    dtype = column.dtype
    if str(dtype) in _COLUMN_TYPES:
        return _COLUMN_TYPES[str(dtype)]
    if dtype.kind == "M":
        return "datetime"
    if dtype.kind == "O" or str(dtype) == "string" or dtype.kind in "US":
        values = column.dropna()
        if len(values) and all(isinstance(v, bytes) for v in values):
            return "binary"
        return "string"
    raise InvalidParameterValue("df", f"column {column.name!r}", f"unsupported dtype {dtype}")


def _pandas_digest(df: Any) -> str:
    import numpy as np
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]  # optional

    head = df.head(_MAX_ROWS)
    # MLflow's rule: a column whose every value's type is exactly str (not a subclass).
    strings = head.columns[df.map(lambda value: type(value) is str).all(axis=0)]
    numbers = head.select_dtypes(include=[np.number]).columns
    head = head[strings.union(numbers)]
    return _md5(
        [pd.util.hash_pandas_object(head).values, np.int64(len(df))]
        + [str(x).encode() for x in df.columns]
    )


def _name(name: str | None) -> str:
    if name is None:
        return "dataset"
    if not isinstance(name, str) or not name:
        raise InvalidParameterValue("name", name, "must be a non-empty string")
    return name


# --- logging --------------------------------------------------------------------------------


def log_input(
    dataset: Dataset,
    context: str | None = None,
    tags: Mapping[str, str] | None = None,
    model: Any = None,
) -> None:
    """Record that the active run read ``dataset`` (MLflow's ``mlflow.log_input``).

    Example::

        steppe.log_input(steppe.data.from_numpy(X, targets=y), context="train")
    """
    from steppe import fluent

    if not isinstance(dataset, Dataset):
        raise InvalidParameterValue(
            "dataset", type(dataset).__name__, "must be a steppe.data.Dataset"
        )
    if context is not None:
        validation.check_tag_value("context", context)
    client, run_id = fluent._artifact_run(None)
    models = [{"model_id": model.model_id}] if getattr(model, "model_id", None) else None
    client.log_inputs(run_id, [dataset.to_input(context, tags)], models)
