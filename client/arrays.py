"""Whole arrays of points (numpy arrays, array.array, lists) as wire-ready column bytes.

For callers that already hold arrays: one conversion per array, no per-point Python work
where the input exposes a contiguous 64-bit buffer. Validates at the call site.
"""

from __future__ import annotations

import sys
from array import array
from typing import Any

from steppe.errors import InvalidParameterValue

_LITTLE = sys.byteorder == "little"
_INT_FORMATS = {"q", "l"} if array("l").itemsize == 8 else {"q"}


def is_array(value: object) -> bool:
    """An array-like of values rather than one scalar."""
    return hasattr(value, "__len__") and not isinstance(value, (str, bytes, bytearray))


def _contiguous(obj: object, float_kind: bool) -> bytes | None:
    try:
        view = memoryview(obj)  # type: ignore[arg-type]
    except TypeError:
        return None
    fmt = view.format.lstrip("@=<")
    ok = fmt == "d" if float_kind else fmt in _INT_FORMATS
    if view.ndim != 1 or view.itemsize != 8 or not view.c_contiguous or not ok:
        return None
    if view.format.startswith(">") or not _LITTLE:
        return None  # take the slow path, which byte-swaps
    return view.tobytes()


def _convert(field: str, obj: Any, float_kind: bool) -> bytes:
    data = _contiguous(obj, float_kind)
    if data is not None:
        return data
    if hasattr(obj, "astype"):  # numpy-like of another dtype: one vectorised cast
        data = _contiguous(obj.astype("float64" if float_kind else "int64"), float_kind)
        if data is not None:
            return data
    try:
        column = array("d" if float_kind else "q", obj)
    except (TypeError, OverflowError) as exc:
        rule = "values must be numbers" if float_kind else "must be 64-bit integers"
        raise InvalidParameterValue(field, obj, f"{rule} ({exc})") from None
    if not _LITTLE:
        column.byteswap()
    return column.tobytes()


def float64_column(field: str, values: Any) -> bytes:
    return _convert(field, values, True)


def int64_column(field: str, values: Any, count: int) -> bytes:
    data = _convert(field, values, False)
    if len(data) != 8 * count:
        raise InvalidParameterValue(
            field, f"<{len(data) // 8} items>", f"must have one item per value ({count})"
        )
    return data


def steps_column(field: str, steps: Any, count: int) -> bytes:
    """``None`` means 0, 1, 2, ...; a scalar means every point at that step."""
    if steps is None:
        return _convert(field, range(count), False)
    if not is_array(steps):
        return _convert(field, [int(steps)], False) * count
    return int64_column(field, steps, count)


def timestamps_column(field: str, timestamps: Any, count: int, now_ms: int) -> bytes:
    """``None`` means now for every point; otherwise non-negative ms since the epoch."""
    if timestamps is None:
        return _convert(field, [now_ms], False) * count
    if not is_array(timestamps):
        if isinstance(timestamps, bool) or int(timestamps) < 0:
            raise InvalidParameterValue(field, timestamps, "must be a non-negative integer (ms)")
        return _convert(field, [int(timestamps)], False) * count
    data = int64_column(field, timestamps, count)
    if count and min(memoryview(data).cast("q")) < 0:
        raise InvalidParameterValue(field, "<array>", "timestamps must be non-negative (ms)")
    return data
