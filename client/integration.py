"""The run a training-framework integration (steppe.lightning, steppe.transformers,
steppe.keras) logs to: the user's active run, or one it starts on every rank and ends.

Built on the fluent API only; it never imports torch (it looks for an initialised
``torch.distributed`` among the loaded modules) and never talks to the network per point.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from steppe import errors, fluent, system_metrics, validation
from steppe.entities import Param
from steppe.tracking import Client

log = logging.getLogger("steppe.integration")

_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")


def flatten(params: Mapping[str, Any], prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """Nested dicts as ``a/b`` keys (Lightning's and MLflow's convention for hparams)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


class TrainingRun:
    """Where an integration's calls go. ``join()`` is called on every rank: it uses the run
    given (``run_id``), else the user's active run (left open at the end), else starts one;
    with ``torch.distributed`` initialised, rank 0 creates it and broadcasts its id, so every
    rank of the job logs into one run. ``end()`` ends only a run that ``join`` started.

    Example::

        run = TrainingRun(run_name="bert-tiny")
        run.join()
        run.log_metrics({"loss": 0.5}, step=10)
        run.end("FINISHED")
    """

    def __init__(
        self,
        *,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        tracking_uri: str | None = None,
        log_system_metrics: bool | None = None,
    ) -> None:
        if run_id is not None:
            validation.check_run_id("run_id", run_id)
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.tracking_uri = tracking_uri
        self.log_system_metrics = log_system_metrics
        self.run_id: str | None = run_id
        self.experiment_id: str | None = None
        self._joined = False
        self._owned = False
        self.client = Client(tracking_uri)
        self._keys: dict[str, str] = {}  # logged key -> the valid MLflow name it is sent as
        self._params: dict[str, str] = {}  # logged by this process (never sent twice)
        self._skipped: set[str] = set()  # keys whose values were not numbers (warned once)

    @property
    def joined(self) -> bool:
        return self._joined

    def join(self) -> str:
        """The run id, starting or joining the run the first time (on every rank)."""
        if self._joined:
            assert self.run_id is not None
            return self.run_id
        if self.tracking_uri is not None:
            fluent.set_tracking_uri(self.tracking_uri)
        active = fluent.active_run()
        if active is not None and (self.run_id is None or active.info.run_id == self.run_id):
            run, self._owned = active, False  # the user's run: log into it, leave it open
        elif self.run_id is not None:  # given, or ours from before a finalize: resume it
            run = fluent.start_run(
                run_id=self.run_id,
                nested=active is not None,
                log_system_metrics=self.log_system_metrics,
            )
            self._owned = True
        else:
            run = self._start_for_job()
            self._owned = True
        self.run_id = run.info.run_id
        self.experiment_id = run.info.experiment_id or self.experiment_id
        self.client = Client()
        self._joined = True
        return self.run_id

    def _start_for_job(self) -> fluent.ActiveRun:
        # start_run puts every rank of a job into one run (steppe.job): by its job key, else
        # created by rank 0 and broadcast over torch.distributed.
        return fluent.start_run(
            experiment_id=self._experiment_id(),
            run_name=self.run_name,
            tags=self.tags,
            log_system_metrics=self.log_system_metrics,
        )

    def _experiment_id(self) -> str | None:
        if self.experiment_name is None:
            return None
        if self.experiment_id is None:
            self.experiment_id = Client().set_experiment(self.experiment_name).experiment_id
        return self.experiment_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params not logged before by this process, in batches of MLflow's 100."""
        run_id = self.join()
        fresh = []
        for key, value in params.items():
            name = self.key(str(key))
            text = validation.check_param_value(f"params[{name!r}]", value)
            if self._params.get(name) != text:
                self._params[name] = text
                fresh.append(Param(name, text))
        step = validation.MAX_PARAMS_TAGS_PER_BATCH
        for start in range(0, len(fresh), step):
            self.client.log_batch(run_id, params=fresh[start : start + step])

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None, prefix: str = "") -> None:
        """Log the numbers among ``metrics`` (floats, ints, 0-d tensors and arrays); others
        are skipped with one warning per key. Costs a buffer append per key."""
        run_id = self.join()
        numbers: dict[str, float] = {}
        for key, value in metrics.items():
            number = _number(value)
            name = self.key(prefix + str(key))
            if number is None:
                if name not in self._skipped:
                    self._skipped.add(name)
                    log.warning("steppe: %s=%r is not a number; not logged", name, value)
                continue
            numbers[name] = number
        # By run id through Client: a buffer append per key whatever the fluent stack holds.
        timestamp_ms = time.time_ns() // 1_000_000
        log_metric = self.client.log_metric
        for name, number in numbers.items():
            log_metric(run_id, name, number, timestamp_ms, step)

    def key(self, key: str) -> str:
        """``key`` as a valid MLflow name: other characters become ``_`` (warned once)."""
        name = self._keys.get(key)
        if name is None:
            name = _BAD_KEY_CHARS.sub("_", key)[: validation.MAX_ENTITY_KEY_LENGTH] or "_"
            try:
                validation.check_name("key", name)
            except errors.InvalidParameterValue:  # a path-like name ("a//b", "../x", "/x")
                name = name.replace("/", "_").strip(".") or "_"
            if name != key:
                log.warning("steppe: metric/param key %r is logged as %r", key, name)
            self._keys[key] = name
        return name

    def end(self, status: str) -> None:
        """End the run if ``join`` started it (on every rank: each ends its own part)."""
        if not self._joined or not self._owned:
            return
        self._joined = False
        active = fluent.active_run()
        if active is not None and active.info.run_id == self.run_id:
            fluent.end_run(status)
        elif self.run_id is not None:  # the user started another run meanwhile: leave theirs
            system_metrics.stop(self.run_id)
            self.client.set_terminated(self.run_id, status)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    item = getattr(value, "item", None)  # torch tensors and numpy scalars/arrays of one value
    size = getattr(value, "numel", None) or getattr(value, "size", None)
    if callable(item):
        try:
            n = size() if callable(size) else size
            if n in (None, 1):
                result = item()
                if isinstance(result, (int, float)):
                    return float(result)
        except (TypeError, ValueError, RuntimeError):  # not a one-value tensor or array
            return None
    return None
