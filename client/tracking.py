"""``steppe.Client``: explicit-run-id access for reads and writes (MLflow's MlflowClient).

Writes of metrics go through the process's buffered sender; run lifecycle, params and tags
are unary gRPC calls; reads use the server's JSON API. Reads first flush this process's
own unacked points, so what you logged is what you read.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from steppe import config, validation
from steppe.buffer import FIELDS, append_point
from steppe.connection import Connection, connect
from steppe.entities import Experiment, FileInfo, Metric, Param, Run, RunTag, number
from steppe.errors import InvalidParameterValue
from steppe.manage import ManageMixin
from steppe.registry import RegistryMixin

if TYPE_CHECKING:
    import pyarrow as pa


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _experiment_json_to_entity(raw: Mapping[str, Any]) -> Experiment:
    return Experiment.from_json(raw)


class Client(RegistryMixin, ManageMixin):
    """Read and write runs by id.

    Example::

        client = steppe.Client()
        run = client.create_run(experiment_id="0")
        client.log_metric(run.info.run_id, "loss", 0.5, step=1)
        client.set_terminated(run.info.run_id)
        history = client.get_metric_history(run.info.run_id, "loss")
    """

    def __init__(self, tracking_uri: str | None = None) -> None:
        from steppe import fluent

        self._tracking_uri = tracking_uri if tracking_uri is not None else fluent.get_tracking_uri()

    @property
    def tracking_uri(self) -> str | None:
        return self._tracking_uri

    @property
    def _conn(self) -> Connection:
        return connect(self._tracking_uri)

    # --- experiments -------------------------------------------------------------------

    def create_experiment(
        self, name: str, artifact_location: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> str:
        validation.check_experiment_name("name", name)
        clean = {
            validation.check_name("tags", k, "tag key"): str(v) for k, v in (tags or {}).items()
        }
        return self._conn.unary.create_experiment(
            name, artifact_location or "", clean
        ).experiment_id

    def get_experiment(self, experiment_id: str) -> Experiment:
        raw = self._conn.get_json(f"/api/steppe/v1/experiments/{_path_id(experiment_id)}")
        return _experiment_json_to_entity(raw["experiment"])

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        for exp in self.search_experiments():
            if exp.name == name:
                return exp
        return None

    def search_experiments(self) -> list[Experiment]:
        raw = self._conn.get_json("/api/steppe/v1/experiments")
        return [_experiment_json_to_entity(e) for e in raw["experiments"]]

    def set_experiment(self, name: str) -> Experiment:
        """Get or create the experiment called ``name``."""
        validation.check_experiment_name("experiment_name", name)
        return self._conn.unary.set_experiment(name)

    # --- runs --------------------------------------------------------------------------

    def create_run(
        self,
        experiment_id: str | None = None,
        start_time: int | None = None,
        tags: Mapping[str, Any] | None = None,
        run_name: str | None = None,
        run_id: str | None = None,
    ) -> Run:
        clean_tags = _tags(tags)
        return self._conn.unary.create_run(
            run_id or uuid.uuid4().hex,
            experiment_id or "0",
            run_name or "",
            start_time or now_ms(),
            dict(clean_tags),
            _user(),
        )

    def get_run(self, run_id: str) -> Run:
        validation.check_run_id("run_id", run_id)
        self._settle()
        raw = self._conn.get_json(f"/api/steppe/v1/runs/{run_id}")
        return Run.from_json(raw["run"])

    def search_runs(
        self,
        experiment_ids: Sequence[str] | None = None,
        filter_string: str = "",
        max_results: int = 1000,
        order_by: Sequence[str] | None = None,
        run_view_type: int = 1,
    ) -> list[Run]:
        """Runs of these experiments (all when None) matching MLflow's ``filter_string``,
        sorted by ``order_by`` (then newest start first, then run id), at most
        ``max_results``. ``run_view_type`` is MLflow's ViewType: 1 active only (default),
        2 deleted only, 3 all.

        Example::

            runs = client.search_runs(["1"], "metrics.loss < 0.1 and params.opt = 'adam'",
                                      order_by=["metrics.loss ASC"])
        """
        from steppe.search import search_pages

        self._settle()
        return search_pages(
            self._conn, experiment_ids, filter_string, max_results, order_by, run_view_type
        )

    def sql(self, query: str, max_rows: int | None = None) -> pa.Table:
        """Run a read-only SQL query over the server's views (README "SQL") and return a
        ``pyarrow.Table`` (``.to_pandas()`` works when pandas is installed). More rows than
        ``max_rows`` (server default 100000) is an error, not a silent cut.

        Example::

            table = client.sql("SELECT key, max(value) FROM metrics GROUP BY key")
        """
        from steppe.sql import fetch_arrow

        self._settle()
        table: pa.Table = fetch_arrow(self._conn.endpoint.http_url, query, max_rows)
        return table

    def update_run(self, run_id: str, status: str | None = None, name: str | None = None) -> None:
        self._conn.unary.update_run(run_id, status, None, name)

    def set_terminated(
        self, run_id: str, status: str = "FINISHED", end_time: int | None = None
    ) -> None:
        """End a run: wait for its points' acks, then record status and end time.

        If the server does not ack them within STEPPE_FLUSH_TIMEOUT_S (or Ctrl-C is pressed
        while waiting), the points stay in the spool and the end of the run is journaled
        after them: `steppe sync` (or the next run on this machine) delivers both."""
        conn = self._conn
        end = end_time or now_ms()
        if conn.sender.wait_or_leave(config.flush_timeout_s()):
            conn.unary.update_run(run_id, status, end, None)
            return
        args = {"run_id": run_id, "status": status, "end_time": end, "run_name": None}
        conn.sender.journal({"op": "update_run", "args": args})

    # --- logging -----------------------------------------------------------------------

    def log_metric(
        self,
        run_id: str,
        key: str,
        value: float,
        timestamp: int | None = None,
        step: int | None = None,
    ) -> None:
        """Buffered: returns after a buffer append; ``flush()`` waits for the ack."""
        sender = self._conn.sender
        sid = sender.buffer.registry.series_id(run_id, validation.check_name("key", key))
        sender.start()
        points = sender.buffer.points
        if append_point(points, sender.buffer_points * FIELDS, sid, value, step, timestamp):
            sender.overflow()

    def log_series(
        self,
        run_id: str,
        key: str,
        values: Any,
        steps: Any = None,
        timestamps: Any = None,
    ) -> None:
        """Log a whole array of points for one key at once (the fast path for arrays).

        ``values`` is any array-like of numbers (numpy arrays are taken without a per-point
        copy); ``steps`` defaults to 0, 1, 2, ... and ``timestamps`` (ms) to now.

        Example::

            client.log_series(run_id, "loss", np.array(losses), steps=np.arange(len(losses)))
        """
        from steppe import arrays

        validation.check_run_id("run_id", run_id)
        validation.check_name("key", key, "metric key")
        value = arrays.float64_column("values", values)
        count = len(value) // 8
        step = arrays.steps_column("steps", steps, count)
        stamps = arrays.timestamps_column("timestamps", timestamps, count, now_ms())
        sender = self._conn.sender
        sender.start()
        sender.enqueue_series(run_id, key, step, stamps, value)

    def log_param(self, run_id: str, key: str, value: Any) -> Any:
        self.log_batch(run_id, params=[Param(key, value)])
        return value

    def set_tag(self, run_id: str, key: str, value: Any) -> None:
        self.log_batch(run_id, tags=[RunTag(key, value)])

    def delete_tag(self, run_id: str, key: str) -> None:
        self._conn.unary.delete_tag(validation.check_run_id("run_id", run_id), key)

    def log_batch(
        self,
        run_id: str,
        metrics: Iterable[Metric] = (),
        params: Iterable[Param] = (),
        tags: Iterable[RunTag] = (),
    ) -> None:
        validation.check_run_id("run_id", run_id)
        clean_params = [
            (
                validation.check_name(f"params[{i}].key", p.key, "param key"),
                validation.check_param_value(f"params[{i}].value", p.value),
            )
            for i, p in enumerate(params)
        ]
        clean_tags = _tags({t.key: t.value for t in tags})
        for m in metrics:
            self.log_metric(run_id, m.key, m.value, m.timestamp, m.step)
        if clean_params:
            self._conn.unary.log_params(run_id, clean_params)
        if clean_tags:
            self._conn.unary.set_tags(run_id, clean_tags)

    def get_metric_history(self, run_id: str, key: str) -> list[Metric]:
        """Every point logged for ``key``, ordered by step then timestamp."""
        validation.check_run_id("run_id", run_id)
        self._settle()
        body = self._conn.get_bytes(
            "/api/steppe/v1/metric-history", {"run_id": run_id, "key": key, "format": "arrow"}
        )
        if body[:1] == b"{":  # a server that predates format=arrow answers JSON
            raw = json.loads(body)
            steps, timestamps = raw["step"], raw["timestamp"]
            values: Iterable[float] = map(number, raw["value"])
        else:
            import pyarrow as pa  # here, not at import: the training process never loads it

            table = pa.ipc.open_stream(body).read_all()
            steps = table.column("step").to_pylist()
            values = table.column("value").to_pylist()
            timestamps = table.column("timestamp").to_pylist()
        rows = zip(itertools.repeat(key), values, timestamps, steps)
        # Built in C; the cyclic GC paused meanwhile (tuples of numbers hold no cycles, and
        # its passes over 100k young objects would cost twice the build itself).
        collecting = gc.isenabled()
        gc.disable()
        try:
            return list(map(tuple.__new__, itertools.repeat(Metric), rows))
        finally:
            if collecting:
                gc.enable()

    # --- artifacts -----------------------------------------------------------------------

    def log_artifact(
        self, run_id: str, local_path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None:
        """Upload one local file into the run's artifacts (under ``artifact_path``), streamed.
        Offline or while the server is away, a copy waits in the spool (README, "Offline").

        Example::

            client.log_artifact(run_id, "model.pt", artifact_path="checkpoints")
        """
        from steppe import artifacts

        run = _run(run_id)
        source = Path(local_path)
        if not source.is_file():
            raise InvalidParameterValue("local_path", str(local_path), "is not a file")
        path = artifacts.artifact_path_for(artifact_path, source.name)
        artifacts.put(self._conn, run, [(path, source)])

    def log_artifacts(
        self, run_id: str, local_dir: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None:
        """Upload every file below ``local_dir``, keeping its layout, under ``artifact_path``."""
        from steppe import artifacts

        run = _run(run_id)
        root = Path(local_dir)
        if not root.is_dir():
            raise InvalidParameterValue("local_dir", str(local_dir), "is not a directory")
        folder = artifacts.check_folder("artifact_path", artifact_path)
        items: list[artifacts.Item] = [
            (artifacts.artifact_path_for(folder, file.relative_to(root).as_posix()), file)
            for file in sorted(p for p in root.rglob("*") if p.is_file())
        ]
        artifacts.put(self._conn, run, items)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Save ``text`` (UTF-8) as the artifact ``artifact_file``, e.g. "notes/summary.txt"."""
        self._log_bytes(run_id, text.encode(), artifact_file)

    def log_dict(self, run_id: str, dictionary: Any, artifact_file: str) -> None:
        """Save ``dictionary`` as JSON (indented, as MLflow), or as YAML when
        ``artifact_file`` ends in .yaml/.yml (needs PyYAML)."""
        if artifact_file.lower().endswith((".yaml", ".yml")):
            import yaml  # type: ignore[import-untyped,unused-ignore]  # optional, for YAML

            data = yaml.safe_dump(dictionary, default_flow_style=False).encode()
        else:
            data = json.dumps(dictionary, indent=2).encode()
        self._log_bytes(run_id, data, artifact_file)

    def log_figure(
        self,
        run_id: str,
        figure: Any,
        artifact_file: str,
        *,
        save_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        """Save a matplotlib or plotly figure as ``artifact_file`` (format from its
        extension, e.g. "plots/loss.png"; plotly writes .html itself and images via kaleido).
        Neither library is imported by steppe: the figure's own methods do the work."""
        import tempfile

        kind = type(figure).__module__.split(".")[0]
        name = PurePosixPath(artifact_file).name
        with tempfile.TemporaryDirectory(prefix="steppe-figure-") as folder:
            target = Path(folder) / name
            if kind == "matplotlib":
                figure.savefig(target, **(save_kwargs or {}))
            elif kind == "plotly":
                if name.lower().endswith(".html"):
                    figure.write_html(target, **(save_kwargs or {}))
                else:
                    figure.write_image(target, **(save_kwargs or {}))
            else:
                raise InvalidParameterValue(
                    "figure", type(figure).__name__, "must be a matplotlib or plotly figure"
                )
            self._log_file_as(run_id, target, artifact_file)

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[FileInfo]:
        """The files and folders directly inside the run's artifact folder ``path``.
        Needs the server (offline: ServerUnavailable); waits for this process's spooled
        artifacts to be delivered first."""
        from steppe import artifacts

        run = _run(run_id)
        return artifacts.list_files(self._artifact_url(), run, path)

    def download_artifacts(
        self, run_id: str, path: str = "", dst_path: str | os.PathLike[str] | None = None
    ) -> str:
        """Download a file or folder of the run's artifacts ("" for all of them) into
        ``dst_path`` (a new temporary folder when None); returns the local path.

        Example::

            local = client.download_artifacts(run_id, "checkpoints", "/tmp/ckpt")
        """
        from steppe import artifacts

        run = _run(run_id)
        return artifacts.download(self._artifact_url(), run, path or "", dst_path)

    @property
    def _http_url(self) -> str:
        """The server's HTTP address (offline or no server: ServerUnavailable, saying so)."""
        return self._conn.http_url()

    def _artifact_url(self) -> str:
        """The server's HTTP address for artifact reads, once what this process spooled
        for it (journaled calls, artifacts) is delivered."""
        conn = self._conn
        url = conn.http_url()  # offline or no server: ServerUnavailable, saying so
        if conn.sender.ops_pending():
            conn.sender.flush(config.flush_timeout_s())
        return url

    def _log_bytes(self, run_id: str, data: bytes, artifact_file: str) -> None:
        from steppe import artifacts

        run = _run(run_id)
        artifacts.put(self._conn, run, [(_artifact_file(artifact_file), data)])

    def _log_file_as(self, run_id: str, local: Path, artifact_file: str) -> None:
        from steppe import artifacts

        run = _run(run_id)
        artifacts.put(self._conn, run, [(_artifact_file(artifact_file), local)])

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every point this process logged to this server is acked."""
        self._conn.sender.flush(config.flush_timeout_s() if timeout_s is None else timeout_s)

    def _settle(self) -> None:
        sender = self._conn.sender
        if sender.unacked_points():
            sender.flush(config.flush_timeout_s())


def _tags(tags: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    return [
        (validation.check_name(f"tags[{k!r}]", k, "tag key"), validation.check_tag_value("tags", v))
        for k, v in (tags or {}).items()
    ]


def _run(run_id: str) -> str:
    return validation.check_run_id("run_id", run_id)


def _artifact_file(artifact_file: str) -> str:
    from steppe import artifacts

    return artifacts.check_file_path("artifact_file", artifact_file)


def _path_id(experiment_id: str) -> str:
    return validation.check_experiment_id("experiment_id", str(experiment_id))


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers): MLflow falls back the same way
        return "unknown"
