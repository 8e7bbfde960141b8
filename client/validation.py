"""Naming rules and limits as MLflow defines them, checked at the call site and by the server.

Pure functions over plain values: no I/O, no imports beyond the standard library, so both
the training process and the ingest side use the same rules. Messages name the field,
the value and the rule.
"""

from __future__ import annotations

import math
import posixpath
import re

from steppe.errors import InvalidParameterValue

#: MLflow's limits (mlflow.utils.validation).
MAX_ENTITY_KEY_LENGTH = 250
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_EXPERIMENT_NAME_LENGTH = 500
MAX_EXPERIMENT_TAG_KEY_LENGTH = 250
MAX_EXPERIMENT_TAG_VAL_LENGTH = 20000  # MLflow 3
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
#: steppe's own: distinct metric keys one run may have (the server enforces it).
MAX_METRIC_KEYS_PER_RUN = 100_000
#: steppe's own: run ids are MLflow's form (client-chosen uuid4 hex, or 1-256 word chars).
RUN_ID_RE = re.compile(r"[a-zA-Z0-9][\w\-]{0,255}")
EXPERIMENT_ID_RE = re.compile(r"[a-zA-Z0-9][\w\-]{0,63}")
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_NAME_RE = re.compile(r"[/\w.\- :]*")
_NAME_RULE = (
    "names may only contain alphanumerics, underscores (_), dashes (-), periods (.), "
    "spaces ( ), colons (:) and slashes (/)"
)


def _bad_path(name: str) -> bool:
    norm = posixpath.normpath(name)
    return norm != name or norm == "." or norm.startswith("..") or norm.startswith("/")


def check_name(field: str, name: object, what: str = "name") -> str:
    """A metric, param or tag key: MLflow's characters, not a path that resolves elsewhere."""
    if not isinstance(name, str):
        raise InvalidParameterValue(field, name, f"{what} must be a string")
    if name == "":
        raise InvalidParameterValue(field, name, f"{what} must not be empty")
    if len(name) > MAX_ENTITY_KEY_LENGTH:
        raise InvalidParameterValue(
            field, name, f"{what} exceeds the maximum length of {MAX_ENTITY_KEY_LENGTH} characters"
        )
    if not _NAME_RE.fullmatch(name):
        raise InvalidParameterValue(field, name, _NAME_RULE)
    if _bad_path(name):
        raise InvalidParameterValue(
            field,
            name,
            f"names must not resolve to other names when treated as paths "
            f"(this one resolves to {posixpath.normpath(name)!r})",
        )
    return name


def check_param_value(field: str, value: object) -> str:
    """Stringify like MLflow (str(value)) and truncate to MAX_PARAM_VAL_LENGTH, as MLflow does."""
    text = value if isinstance(value, str) else str(value)
    return text[:MAX_PARAM_VAL_LENGTH]


def check_tag_value(field: str, value: object) -> str:
    """Stringify like MLflow and truncate to MAX_TAG_VAL_LENGTH, as MLflow does."""
    text = value if isinstance(value, str) else str(value)
    return text[:MAX_TAG_VAL_LENGTH]


def check_metric_value(field: str, value: object) -> float:
    """A real number (NaN and +/-inf are valid); bools and strings are not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            # numpy scalars and 0-d arrays expose __float__; strings do not count.
            if isinstance(value, (str, bytes)) or not hasattr(value, "__float__"):
                raise TypeError
            return float(value)  # type: ignore[arg-type,unused-ignore]
        except (TypeError, ValueError):
            raise InvalidParameterValue(
                field, value, "metric value must be a number (64-bit float)"
            ) from None
    return float(value)


def check_step(field: str, step: object) -> int:
    if isinstance(step, bool) or not isinstance(step, int):
        if hasattr(step, "__index__"):
            step = step.__index__()
        else:
            raise InvalidParameterValue(field, step, "step must be an integer (64-bit)")
    assert isinstance(step, int)
    if not INT64_MIN <= step <= INT64_MAX:
        raise InvalidParameterValue(field, step, "step must fit in a 64-bit signed integer")
    return step


def check_timestamp(field: str, timestamp_ms: object) -> int:
    if isinstance(timestamp_ms, bool) or not isinstance(timestamp_ms, int):
        if isinstance(timestamp_ms, float) and math.isfinite(timestamp_ms):
            timestamp_ms = int(timestamp_ms)
        else:
            raise InvalidParameterValue(
                field, timestamp_ms, "timestamp must be an integer (milliseconds since the epoch)"
            )
    if not 0 <= timestamp_ms <= INT64_MAX:
        raise InvalidParameterValue(
            field, timestamp_ms, "timestamp must be a non-negative 64-bit integer (ms)"
        )
    return timestamp_ms


def check_run_id(field: str, run_id: object) -> str:
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
        raise InvalidParameterValue(
            field, run_id, "run ids are 1-256 letters, digits, underscores or dashes"
        )
    return run_id


def check_experiment_id(field: str, experiment_id: object) -> str:
    if not isinstance(experiment_id, str) or not EXPERIMENT_ID_RE.fullmatch(experiment_id):
        raise InvalidParameterValue(
            field, experiment_id, "experiment ids are 1-64 letters, digits, underscores or dashes"
        )
    return experiment_id


def check_experiment_name(field: str, name: object) -> str:
    """MLflow's rule (mlflow.utils.validation._validate_experiment_name), on the client and the
    server alike: a string, not empty, at most MAX_EXPERIMENT_NAME_LENGTH characters; all
    spaces is a name (MLflow accepts it, so steppe does too)."""
    if not isinstance(name, str):
        raise InvalidParameterValue(field, name, "experiment name must be a string")
    if name == "":
        raise InvalidParameterValue(field, name, "is a required parameter (a non-empty string)")
    if len(name) > MAX_EXPERIMENT_NAME_LENGTH:
        raise InvalidParameterValue(
            field,
            name,
            f"experiment name exceeds the maximum length of {MAX_EXPERIMENT_NAME_LENGTH} "
            "characters",
        )
    return name
