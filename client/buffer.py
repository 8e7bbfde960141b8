"""The bounded point buffer that log_metric appends to: the training loop's whole cost.

Producers (any number of threads) only ``extend`` one flat list by a 4-tuple (series id,
step, timestamp_ms, value), which is atomic, so they take no lock and create no garbage the
cycle collector must visit. Consumers (the sender, or a producer draining an overflow) take
points from the front under the buffer's drain lock, so concurrent appends are never lost.
"""

from __future__ import annotations

import threading
import time
from array import array
from collections.abc import Sequence
from typing import cast

from steppe import validation

#: Fields per point in the flat list: series id, step, timestamp_ms, value.
FIELDS = 4

_INT64_MIN, _INT64_MAX = validation.INT64_MIN, validation.INT64_MAX
_time_ns = time.time_ns


def append_point(
    points: list[int | float],
    limit: int,
    sid: int,
    value: float,
    step: int | None,
    timestamp: int | None,
) -> bool:
    """The one append of ``log_metric`` (fluent and ``Client``): check and default one point
    as MLflow does (``step`` 0, ``timestamp`` now in ms; NaN and +/-inf are values), append it
    to the flat list, and say whether the list is now over ``limit`` items (then the caller
    drains it: ``Sender.overflow``). The checks cost nothing for a float value and int step.
    """
    if type(value) is not float:
        value = validation.check_metric_value("value", value)
    if step is None:
        step = 0
    elif type(step) is not int or step > _INT64_MAX or step < _INT64_MIN:
        step = validation.check_step("step", step)
    if timestamp is None:
        timestamp = _time_ns() // 1_000_000
    elif type(timestamp) is not int or timestamp < 0:
        timestamp = validation.check_timestamp("timestamp", timestamp)
    points.extend((sid, step, timestamp, value))
    return len(points) > limit


class SeriesRegistry:
    """series id <-> (run id, key). Ids are small ints so a point is a compact tuple."""

    def __init__(self) -> None:
        self._ids: dict[tuple[str, str], int] = {}
        self.run_ids: list[str] = []
        self.keys: list[str] = []
        self._run_index: dict[str, int] = {}
        self._key_index: dict[str, int] = {}
        self.series_run: list[int] = []
        self.series_key: list[int] = []
        #: True while there is one run and series id == key index (the common case),
        #: so a chunk's key_index is its series ids and its run_index all zeros.
        self.identity = True
        self._lock = threading.Lock()

    def series_id(self, run_id: str, key: str) -> int:
        sid = self._ids.get((run_id, key))
        if sid is not None:
            return sid
        with self._lock:
            sid = self._ids.get((run_id, key))
            if sid is None:
                ri = self._run_index.setdefault(run_id, len(self.run_ids))
                if ri == len(self.run_ids):
                    self.run_ids.append(run_id)
                ki = self._key_index.setdefault(key, len(self.keys))
                if ki == len(self.keys):
                    self.keys.append(key)
                # Append the columns before publishing the id, so a reader that sees
                # the id always finds its run and key.
                sid = len(self.series_run)
                if ri != 0 or ki != sid:
                    self.identity = False
                self.series_run.append(ri)
                self.series_key.append(ki)
                self._ids[(run_id, key)] = sid
            return sid


class Columns:
    """One drained chunk as wire-ready columns with per-chunk run/key dictionaries."""

    __slots__ = ("key_index", "keys", "run_ids", "run_index", "step", "timestamp_ms", "value")

    def __init__(self, registry: SeriesRegistry, flat: list[int | float]) -> None:
        # The flat list holds ints in its first three fields, the float value in the fourth.
        sids = cast("list[int]", flat[0::FIELDS])
        run_index: array[int] | bytes
        if registry.identity:
            run_index = bytes(4 * len(sids))
            key_index = array("I", sids)
        else:
            series_run, series_key = registry.series_run, registry.series_key
            run_index = array("I", map(series_run.__getitem__, sids))
            key_index = array("I", map(series_key.__getitem__, sids))
        if not registry.identity and (len(registry.keys) > 256 or len(registry.run_ids) > 256):
            # Big registries: send only what this chunk uses.
            run_index, self.run_ids = _compact(run_index, registry.run_ids)
            key_index, self.keys = _compact(key_index, registry.keys)
        else:
            self.run_ids = registry.run_ids[:]
            self.keys = registry.keys[:]
        self.run_index = run_index
        self.key_index = key_index
        self.step = array("q", cast("list[int]", flat[1::FIELDS]))
        self.timestamp_ms = array("q", cast("list[int]", flat[2::FIELDS]))
        self.value = array("d", flat[3::FIELDS])


def _compact(index: Sequence[int], names: list[str]) -> tuple[array[int], list[str]]:
    used = sorted(set(index))
    remap = {old: new for new, old in enumerate(used)}
    return array("I", map(remap.__getitem__, index)), [names[i] for i in used]


class PointBuffer:
    """Appends from the training loop; ``drain`` hands chunks to whoever encodes them."""

    def __init__(self) -> None:
        self.points: list[int | float] = []  # flat: FIELDS items per point
        self.registry = SeriesRegistry()
        self.drain_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.points) // FIELDS

    def take(self, max_points: int) -> list[int | float]:
        """Remove and return up to max_points (flat) from the front. Hold ``drain_lock``."""
        points = self.points
        n = min(len(points), max_points * FIELDS)
        chunk = points[:n]
        # Appends that land after len() go past n and stay in the buffer.
        del points[:n]
        return chunk
