"""MLflow's fluent API (start_run, log_metric, ...) over one process-wide active-run stack.

``log_metric`` is the hot path: a dict lookup, two type checks and one list append. Bad
input raises here, at the call site; network trouble never does (see ``flush``).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from steppe import config, errors, system_metrics, validation
from steppe.arrays import is_array
from steppe.buffer import FIELDS
from steppe.buffer import append_point as _append_point
from steppe.connection import close_all, connect
from steppe.entities import Experiment, FileInfo, Run, RunData, RunInfo
from steppe.job import JobRuns
from steppe.sender import Sender
from steppe.tracking import Client, now_ms

_time_ns = time.time_ns

_tracking_uri: str | None = None
_experiment_id: str | None = None
_stack: list[ActiveRun] = []
_last_run_id: str | None = None
#: Which runs of a distributed job this process joins (steppe.job).
_job_runs = JobRuns()
_state_lock = threading.RLock()


# --- tracking URI and experiments ----------------------------------------------------


def set_tracking_uri(uri: str | os.PathLike[str] | None) -> None:
    """Point this process at a server (``http://host:port``) or a local data dir (a path)."""
    global _tracking_uri
    _tracking_uri = None if uri is None else os.fspath(uri)


def get_tracking_uri() -> str | None:
    """The URI in use: set_tracking_uri, else STEPPE_TRACKING_URI/MLFLOW_TRACKING_URI,
    else None, meaning the local data dir (./steppe-data, or STEPPE_DATA_DIR)."""
    return _tracking_uri if _tracking_uri is not None else config.tracking_uri()


def set_experiment(
    experiment_name: str | None = None, experiment_id: str | None = None
) -> Experiment:
    """Make an experiment active for new runs, creating it by name if needed."""
    global _experiment_id
    client = Client()
    if (experiment_name is None) == (experiment_id is None):
        raise errors.InvalidParameterValue(
            "experiment_name", experiment_name, "give exactly one of experiment_name, experiment_id"
        )
    exp = (
        client.set_experiment(experiment_name)
        if experiment_name is not None
        else (client.get_experiment(str(experiment_id)))
    )
    if exp.lifecycle_stage != "active":
        raise errors.InvalidParameterValue(
            "experiment", exp.name, "cannot set a deleted experiment as the active experiment"
        )
    _experiment_id = exp.experiment_id
    return exp


def create_experiment(
    name: str, artifact_location: str | None = None, tags: Mapping[str, Any] | None = None
) -> str:
    return Client().create_experiment(name, artifact_location, tags)


def get_experiment(experiment_id: str) -> Experiment:
    return Client().get_experiment(experiment_id)


def get_experiment_by_name(name: str) -> Experiment | None:
    return Client().get_experiment_by_name(name)


def search_experiments() -> list[Experiment]:
    return Client().search_experiments()


def _resolve_experiment_id(client: Client) -> str:
    if _experiment_id is not None:
        return _experiment_id
    if config.experiment_id():
        return str(config.experiment_id())
    name = config.experiment_name()
    if name:
        return client.set_experiment(name).experiment_id
    return "0"


# --- runs ----------------------------------------------------------------------------


class ActiveRun:
    """The run ``start_run`` returned; a context manager that ends it.

    ``info`` is as of the start; ``data`` is read from the server when asked for.
    """

    def __init__(self, run: Run, tracking_uri: str | None) -> None:
        self._run = run
        self._tracking_uri = tracking_uri
        self._series: dict[str, int] = {}
        self._points: list[int | float] = []
        self._limit = 0
        self._sender: Sender | None = None
        self._bind()

    def _bind(self) -> Sender:
        conn = connect(self._tracking_uri)
        self._sender = sender = conn.sender
        self._registry = sender.buffer.registry
        self._series = {}
        self._points = sender.buffer.points
        self._limit = sender.buffer_points * FIELDS
        sender.start()
        return sender

    def _unbind(self) -> None:
        """After a fork: an empty private list and a zero limit route the next log call
        through ``_overflow``, which binds to this process's own connection."""
        self._sender = None
        self._series = {}
        self._points = []
        self._limit = 0

    def _overflow(self) -> None:
        # After _unbind, _series is empty, so the child's first log call reaches
        # _register, which binds before anything is appended to the private list.
        sender = self._sender if self._sender is not None else self._bind()
        sender.overflow()

    @property
    def info(self) -> RunInfo:
        return self._run.info

    @property
    def data(self) -> RunData:
        return Client(self._tracking_uri).get_run(self._run.info.run_id).data

    def _register(self, key: str) -> int:
        validation.check_name("key", key, "metric key")
        if self._sender is None:
            self._overflow()
        sid = self._registry.series_id(self._run.info.run_id, key)
        self._series[key] = sid
        return sid

    def __enter__(self) -> ActiveRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            end_run("FINISHED")
            return
        status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
        try:
            end_run(status)
        except errors.SteppeError as err:  # don't mask the user's exception with ours
            print(f"steppe: could not end run {self.info.run_id}: {err}", file=sys.stderr)

    def __repr__(self) -> str:
        return f"<ActiveRun: run_id={self.info.run_id}, status={self.info.status}>"


def start_run(
    run_id: str | None = None,
    experiment_id: str | None = None,
    run_name: str | None = None,
    nested: bool = False,
    tags: Mapping[str, Any] | None = None,
    description: str | None = None,
    parent_run_id: str | None = None,
    log_system_metrics: bool | None = None,
) -> ActiveRun:
    """Start a run (or resume ``run_id``, else STEPPE_RUN_ID/MLFLOW_RUN_ID) and make it active.

    ``log_system_metrics=True`` (or MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING, or
    ``enable_system_metrics_logging()``) samples ``system/*`` metrics until ``end_run``.

    Example::

        with steppe.start_run(run_name="baseline"):
            steppe.log_param("lr", 0.01)
            steppe.log_metric("loss", 0.5, step=1)
    """
    global _last_run_id
    with _state_lock:
        if _stack and not nested and parent_run_id is None:
            raise errors.SteppeError(
                f"Run with UUID {_stack[-1].info.run_id} is already active. To start a new "
                "run, first end the current run with steppe.end_run(). To start a nested "
                "run, call start_run with nested=True"
            )
        client = Client()
        if client.tracking_uri is None and config.spans_several_hosts() and not config.offline():
            raise errors.SteppeError(
                "this job spans several hosts, and each would start a steppe server of its "
                "own on its local data dir: give every process one server address "
                "(STEPPE_TRACKING_URI or MLFLOW_TRACKING_URI, e.g. http://head-node:5000, from "
                "`steppe server --host 0.0.0.0`), or STEPPE_MODE=offline to spool and `steppe "
                "sync` later"
            )
        conn = connect(client.tracking_uri)
        if run_id is None:
            run_id = config.take_run_id()  # set by `mlflow run` or a launcher
        if run_id is not None:
            validation.check_run_id("run_id", run_id)
            resumed = conn.unary.update_run(run_id, "RUNNING", None, run_name)
            run = resumed or Run(
                RunInfo(run_id, "", run_name or "", "RUNNING", now_ms(), None), RunData()
            )
        else:
            all_tags = dict(tags or {})
            parent = parent_run_id or (_stack[-1].info.run_id if nested and _stack else None)
            if parent:
                all_tags["mlflow.parentRunId"] = parent
            if description is not None:
                all_tags["mlflow.note.content"] = description
            if run_name:
                validation.check_tag_value("run_name", run_name)
            exp_id = experiment_id if experiment_id is not None else _resolve_experiment_id(client)
            created: list[Run] = []

            def create(new_id: str) -> None:
                # Idempotent on the id: of several processes creating one, the first's name
                # and tags win and the others get that run.
                created.append(
                    client.create_run(
                        experiment_id=str(exp_id), tags=all_tags, run_name=run_name, run_id=new_id
                    )
                )

            shared = _job_runs.run_id(str(exp_id), create)  # a run of the whole job, or None
            if shared is None:
                create(uuid.uuid4().hex)
                run = created[0]
            elif created and created[0].info.status == "RUNNING":
                run = created[0]
            else:  # made by rank 0, or ended by an earlier attempt of the job: running again
                resumed = conn.unary.update_run(shared, "RUNNING", None, None)
                run = resumed or Run(
                    RunInfo(shared, str(exp_id), run_name or "", "RUNNING", now_ms(), None),
                    RunData(),
                )
        active = ActiveRun(run, client.tracking_uri)
        _stack.append(active)
        _last_run_id = run.info.run_id
    if system_metrics.wanted(log_system_metrics):  # log_system_metrics=True, or MLflow's env
        system_metrics.start(run.info.run_id, client.tracking_uri)
    return active


def active_run() -> ActiveRun | None:
    """The innermost active run, or None."""
    return _stack[-1] if _stack else None


def last_active_run() -> Run | None:
    """The active run, else the most recently ended one (read from the server)."""
    run_id = _stack[-1].info.run_id if _stack else _last_run_id
    return None if run_id is None else Client().get_run(run_id)


def end_run(status: str = "FINISHED") -> None:
    """End the active run: wait for its points to be acked, then record ``status``.

    Raises FlushTimeout (saying how many points are still unsent) if the server does
    not ack them within STEPPE_FLUSH_TIMEOUT_S.
    """
    if status not in ("FINISHED", "FAILED", "KILLED"):
        raise errors.InvalidParameterValue(
            "status", status, "must be one of FINISHED, FAILED, KILLED"
        )
    with _state_lock:
        if not _stack:
            return
        run = _stack.pop()
        system_metrics.stop(run.info.run_id)
        Client(run._tracking_uri).set_terminated(run.info.run_id, status)
    _say_where(run)


def _say_where(run: ActiveRun) -> None:
    """MLflow's "View run ... at" lines (to stderr, so a script's own output stays its own):
    the run's page, and for a local data dir where the data went."""
    if not config.print_run_urls():
        return
    endpoint = connect(run._tracking_uri).endpoint
    info = run.info
    name = info.run_name or info.run_id
    if endpoint.http_url and endpoint.grpc_target:
        lines = [f"steppe: View run {name} at: {endpoint.http_url}/runs/{info.run_id}"]
        if info.experiment_id:
            lines.append(
                f"steppe: View experiment at: {endpoint.http_url}/experiments/{info.experiment_id}"
            )
    else:
        lines = [f"steppe: run {name} is spooled on this machine; `steppe sync` sends it"]
    if endpoint.data_dir is not None:
        lines.append(
            f"steppe: data in {endpoint.data_dir}; `steppe ui --data-dir {endpoint.data_dir}` "
            "serves it once this process has ended"
        )
    print("\n".join(lines), file=sys.stderr, flush=True)


def _get_or_start_run() -> ActiveRun:
    if _stack:
        return _stack[-1]
    return start_run()


def _run_for(run_id: str | None) -> ActiveRun:
    if run_id is None:
        return _stack[-1] if _stack else _get_or_start_run()
    for run in reversed(_stack):
        if run.info.run_id == run_id:
            return run
    validation.check_run_id("run_id", run_id)
    return ActiveRun(Client().get_run(run_id), get_tracking_uri())


# --- logging -------------------------------------------------------------------------


def log_metric(
    key: str,
    value: float,
    step: int | None = None,
    timestamp: int | None = None,
    run_id: str | None = None,
    **_ignored: Any,
) -> None:
    """Log one point: costs a buffer append; the background sender ships it.

    ``step`` defaults to 0 and ``timestamp`` (ms) to now, as in MLflow. NaN and +/-inf
    are valid values.
    """
    run = (_stack[-1] if _stack else _get_or_start_run()) if run_id is None else _run_for(run_id)
    sid = run._series.get(key)
    if sid is None:
        sid = run._register(key)
    if _append_point(run._points, run._limit, sid, value, step, timestamp):
        run._overflow()


def log_metrics(
    metrics: Mapping[str, float],
    step: int | None = None,
    timestamp: int | None = None,
    run_id: str | None = None,
    **_ignored: Any,
) -> None:
    """Log several keys at one step and one timestamp.

    Values may also be arrays (numpy arrays, lists): then each key logs a whole series,
    ``step`` is an array of the same length (default 0, 1, 2, ...) and ``timestamp`` a
    scalar or an array (default now). This is the fast path for callers holding arrays::

        steppe.log_metrics({"loss": losses, "acc": accs}, step=np.arange(len(losses)))
    """
    if timestamp is None:
        timestamp = _time_ns() // 1_000_000
    for key, value in metrics.items():
        if type(value) is float or not is_array(value):
            log_metric(key, value, step, timestamp, run_id)
            continue
        run = (
            (_stack[-1] if _stack else _get_or_start_run()) if run_id is None else _run_for(run_id)
        )
        Client(run._tracking_uri).log_series(run.info.run_id, key, value, step, timestamp)


def log_param(key: str, value: Any, synchronous: bool | None = None) -> Any:
    """Log a param (stringified, truncated to 6000 characters as MLflow does).

    Re-logging a key with another value raises InvalidParameterValue.
    """
    run = _get_or_start_run()
    Client(run._tracking_uri).log_param(run.info.run_id, key, value)
    return value


def log_params(params: Mapping[str, Any], synchronous: bool | None = None) -> None:
    from steppe.entities import Param

    run = _get_or_start_run()
    Client(run._tracking_uri).log_batch(
        run.info.run_id, params=[Param(k, v) for k, v in params.items()]
    )


def set_tag(key: str, value: Any, synchronous: bool | None = None) -> None:
    run = _get_or_start_run()
    Client(run._tracking_uri).set_tag(run.info.run_id, key, value)


def set_tags(tags: Mapping[str, Any], synchronous: bool | None = None) -> None:
    from steppe.entities import RunTag

    run = _get_or_start_run()
    Client(run._tracking_uri).log_batch(
        run.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()]
    )


def delete_tag(key: str) -> None:
    run = _get_or_start_run()
    Client(run._tracking_uri).delete_tag(run.info.run_id, key)


def get_run(run_id: str) -> Run:
    return Client().get_run(run_id)


def flush(timeout_s: float | None = None) -> None:
    """Wait until every point logged so far is acked by the server.

    Raises FlushTimeout with the count of unacked points if that takes longer than
    ``timeout_s`` (default STEPPE_FLUSH_TIMEOUT_S).
    """
    Client().flush(timeout_s)


# --- artifacts -----------------------------------------------------------------------


def _artifact_run(run_id: str | None) -> tuple[Client, str]:
    if run_id is not None:
        return Client(), validation.check_run_id("run_id", run_id)
    run = _get_or_start_run()
    return Client(run._tracking_uri), run.info.run_id


def log_artifact(
    local_path: str | os.PathLike[str], artifact_path: str | None = None, run_id: str | None = None
) -> None:
    """Upload a local file into the active run's artifacts (streamed; any size).

    Example::

        steppe.log_artifact("confusion.csv", artifact_path="eval")
    """
    client, rid = _artifact_run(run_id)
    client.log_artifact(rid, local_path, artifact_path)


def log_artifacts(
    local_dir: str | os.PathLike[str], artifact_path: str | None = None, run_id: str | None = None
) -> None:
    """Upload every file below ``local_dir`` (keeping its layout) into the active run."""
    client, rid = _artifact_run(run_id)
    client.log_artifacts(rid, local_dir, artifact_path)


def log_text(text: str, artifact_file: str, run_id: str | None = None) -> None:
    """Save ``text`` as the artifact ``artifact_file`` of the active run."""
    client, rid = _artifact_run(run_id)
    client.log_text(rid, text, artifact_file)


def log_dict(dictionary: Any, artifact_file: str, run_id: str | None = None) -> None:
    """Save ``dictionary`` as JSON (or YAML for .yaml/.yml) in the active run's artifacts."""
    client, rid = _artifact_run(run_id)
    client.log_dict(rid, dictionary, artifact_file)


def log_figure(
    figure: Any,
    artifact_file: str,
    *,
    save_kwargs: Mapping[str, Any] | None = None,
    run_id: str | None = None,
) -> None:
    """Save a matplotlib or plotly figure (e.g. "plots/loss.png") in the active run."""
    client, rid = _artifact_run(run_id)
    client.log_figure(rid, figure, artifact_file, save_kwargs=save_kwargs)


def _artifact_target(
    artifact_uri: str | None, run_id: str | None, artifact_path: str | None
) -> tuple[Client, str, str]:
    if artifact_uri is not None:
        if run_id is not None or artifact_path is not None:
            raise errors.InvalidParameterValue(
                "artifact_uri", artifact_uri, "give artifact_uri, or run_id and artifact_path"
            )
        if not artifact_uri.startswith("runs:/"):
            raise errors.InvalidParameterValue(
                "artifact_uri", artifact_uri, "steppe resolves runs:/<run_id>/<path> URIs"
            )
        rid, _, path = artifact_uri[len("runs:/") :].strip("/").partition("/")
        return Client(), validation.check_run_id("artifact_uri", rid), path
    if run_id is None:
        run = _stack[-1] if _stack else None
        if run is None:
            raise errors.InvalidParameterValue(
                "run_id", None, "no active run: give run_id or artifact_uri"
            )
        return Client(run._tracking_uri), run.info.run_id, artifact_path or ""
    return Client(), validation.check_run_id("run_id", run_id), artifact_path or ""


def list_artifacts(
    artifact_uri: str | None = None, run_id: str | None = None, artifact_path: str | None = None
) -> list[FileInfo]:
    """The artifacts directly inside a folder of a run (``runs:/<run_id>/<path>``, or
    ``run_id`` and ``artifact_path``; the active run by default)."""
    client, rid, path = _artifact_target(artifact_uri, run_id, artifact_path)
    return client.list_artifacts(rid, path)


def download_artifacts(
    artifact_uri: str | None = None,
    run_id: str | None = None,
    artifact_path: str | None = None,
    dst_path: str | os.PathLike[str] | None = None,
) -> str:
    """Download a run's artifact file or folder (all of them by default); the local path.

    Example::

        local = steppe.download_artifacts(f"runs:/{run_id}/plots", dst_path="out")
    """
    client, rid, path = _artifact_target(artifact_uri, run_id, artifact_path)
    return client.download_artifacts(rid, path, dst_path)


# --- interpreter exit ----------------------------------------------------------------


def _at_exit() -> None:
    """End runs left open (FINISHED, like MLflow) and wait for every point's ack."""
    timeout_s = config.flush_timeout_s()
    # A forked child leaves its parent's runs open: the parent ends them.
    _stack[:] = [run for run in _stack if run.info.run_id not in _inherited]
    while _stack:
        run = _stack[-1]
        try:
            end_run("FINISHED")
        except errors.SteppeError as err:
            _stack.remove(run) if run in _stack else None
            print(f"steppe: could not end run {run.info.run_id}: {err}", file=sys.stderr)
    for problem in close_all(timeout_s):
        print(f"steppe: {problem}", file=sys.stderr)


def _rebind_after_fork() -> None:
    # A forked child keeps the parent's active runs and may log to them, on its own
    # stream: drop the parent's buffer and sender (never resend the parent's points)
    # and reconnect lazily on the child's first log call.
    global _state_lock
    _state_lock = threading.RLock()
    for run in _stack:
        run._unbind()
        _inherited.add(run.info.run_id)


#: Runs a forked child got from its parent: the child logs to them but never ends them.
_inherited: set[str] = set()
os.register_at_fork(after_in_child=_rebind_after_fork)
atexit.register(_at_exit)
