"""The steppe side of an import: experiments, runs, params and tags through the client's
calls, metric points through the streaming client (WAL, exactly-once), registered models.

Exactly once, by construction: each source run's points go on a stream of their own whose
id is derived from the source kind and run id, cut into batches of a fixed size in the
source's fixed order. A re-run (after a crash, Ctrl-C, a lost connection) sends the same
batches under the same (stream id, seq), and the server drops the ones it stored already.
A run whose points were all acked is marked with the ``steppe.import.points`` tag and is
skipped whole next time. This module never reads a source and never writes Parquet itself.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from steppe import config, errors, validation
from steppe.connection import Connection, connect
from steppe.importers.progress import Progress
from steppe.importers.records import (
    DONE_TAG,
    SOURCE_TAG,
    Piece,
    RegisteredModelRecord,
    RunRecord,
    Source,
    VersionRecord,
)
from steppe.sender import Sender

if TYPE_CHECKING:
    from steppe.tracking import Client

log = logging.getLogger("steppe.importers")

#: Points per batch on an import stream. Part of the stream id (``-b<N>-``): a resumed
#: import must cut batches where the first attempt did, or seqs would not line up.
BATCH_POINTS = 32768
#: Unacked points per run stream before the reader waits (no spool: the source is the copy).
MAX_UNACKED_POINTS = 8 * BATCH_POINTS
#: Runs whose last batches are still being acked while the next run is read.
RUNS_IN_FLIGHT = 4
_PARAMS_PER_CALL = 100
#: On an imported model version: the source's version number (with SOURCE_TAG).
VERSION_TAG = "steppe.import.source_version"
_LITTLE = sys.byteorder == "little"
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")


def stream_id_for(kind: str, run_id: str, batch_points: int = BATCH_POINTS) -> str:
    """The import stream of one source run: the same on every attempt, never a UUIDv7 (so
    the server never expires its watermark), never the server's reserved prefix.

    >>> stream_id_for("mlflow", "0f3a")[:17]
    'import-v1-b32768-'
    """
    digest = hashlib.sha256(f"{kind}\0{run_id}".encode()).hexdigest()[:40]
    return f"import-v1-b{batch_points}-{digest}"


def _le(column: array) -> bytes:  # type: ignore[type-arg]
    if not _LITTLE:
        column.byteswap()
    return column.tobytes()


@dataclass
class Outcome:
    """What an import did, for the fidelity report."""

    imported_runs: list[str] = field(default_factory=list)
    skipped_runs: list[str] = field(default_factory=list)  # complete from an earlier attempt
    points_sent: int = 0
    experiments: dict[str, str] = field(default_factory=dict)  # source id -> steppe id
    models: dict[str, dict[int, int]] = field(default_factory=dict)  # name -> src -> steppe
    differences: list[str] = field(default_factory=list)


class RunStream:
    """One source run's points on their own stream: re-cut into BATCH_POINTS batches from
    the run's first point, whatever sizes the reader hands over."""

    def __init__(self, conn: Connection, kind: str, run_id: str, batch_points: int) -> None:
        self.run_id = run_id
        self.points = 0
        self.dropped: dict[str, int] = {}
        self._batch_points = batch_points
        self._keys: list[str] = []
        self._steps: list[int] = []
        self._stamps: list[int] = []
        self._values: list[float] = []
        self._checked: dict[str, bool] = {}
        self.sender = Sender(
            conn.stub_for_stream,
            buffer_points=batch_points,
            batch_points=batch_points,
            send_interval_s=config.send_interval_s(),
            spool=None,
            window=config.send_window_batches(),
            max_inflight_bytes=config.max_inflight_bytes(),
            describe_server=lambda: f"the steppe server at {conn.endpoint.http_url}",
            stream_id=stream_id_for(kind, run_id, batch_points),
        )

    def add(self, piece: Piece) -> int:
        """Queue a piece; returns how many of its points were queued."""
        keys, steps, stamps, values = piece.keys, piece.steps, piece.timestamps_ms, piece.values
        if not self._valid(keys, stamps):
            kept = [i for i, (k, t) in enumerate(zip(keys, stamps, strict=True)) if self._ok(k, t)]
            keys = [keys[i] for i in kept]
            steps = [steps[i] for i in kept]
            stamps = [stamps[i] for i in kept]
            values = [values[i] for i in kept]
        self._keys += keys
        self._steps += steps
        self._stamps += stamps
        self._values += values
        size = self._batch_points
        while len(self._keys) >= size:
            self._emit(size)
        return len(keys)

    def _valid(self, keys: list[str], stamps: list[int]) -> bool:
        for key in set(keys) - self._checked.keys():
            try:
                validation.check_name("key", key, "metric key")
                self._checked[key] = True
            except errors.InvalidParameterValue:
                self._checked[key] = False
        return all(self._checked[k] for k in set(keys)) and (not stamps or min(stamps) >= 0)

    def _ok(self, key: str, stamp: int) -> bool:
        if self._checked[key] and stamp >= 0:
            return True
        why = f"key {key!r} breaks steppe's key rule" if not self._checked[key] else key
        if self._checked[key]:
            why = f"key {key!r}: negative timestamp"
        self.dropped[why] = self.dropped.get(why, 0) + 1
        return False

    def _emit(self, count: int) -> None:
        keys = self._keys[:count]
        names = {k: i for i, k in enumerate(dict.fromkeys(keys))}  # in first-seen order
        index = array("I", map(names.__getitem__, keys))
        zeros = bytes(4 * count)
        self.sender.enqueue_batch(
            [self.run_id],
            list(names),
            zeros,
            _le(index),
            _le(array("q", self._steps[:count])),
            _le(array("q", self._stamps[:count])),
            _le(array("d", self._values[:count])),
        )
        del self._keys[:count], self._steps[:count], self._stamps[:count]
        del self._values[:count]
        self.points += count
        self.sender.wait_below(MAX_UNACKED_POINTS, config.flush_timeout_s())

    def close(self) -> None:
        """Send the last partial batch (the reader has no more points of this run)."""
        if self._keys:
            self._emit(len(self._keys))

    def finish(self) -> None:
        """Wait until every batch is acked, then stop the stream's worker."""
        try:
            self.sender.flush(config.flush_timeout_s())
        finally:
            self.sender.shutdown(1.0)


def _sql_list(ids: Iterable[str]) -> str:
    return ", ".join(f"'{validation.check_run_id('run_id', i)}'" for i in ids)


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def existing_state(client: Client, run_ids: Sequence[str]) -> tuple[set[str], dict[str, str]]:
    """Which of these runs exist in steppe, and the import tags of those that have them
    (run id -> ``steppe.import.source`` value; complete runs also have DONE_TAG)."""
    exists: set[str] = set()
    marks: dict[str, str] = {}
    for part in _chunks(run_ids, 1000):
        ids = _sql_list(part)
        table = client.sql(f"SELECT run_id FROM runs WHERE run_id IN ({ids})", max_rows=1_000_000)
        exists.update(table.column("run_id").to_pylist())
        table = client.sql(
            f"SELECT run_id, key, value FROM tags WHERE run_id IN ({ids}) "
            f"AND key IN ('{SOURCE_TAG}', '{DONE_TAG}')",
            max_rows=1_000_000,
        )
        for run_id, key, value in zip(
            table.column("run_id").to_pylist(),
            table.column("key").to_pylist(),
            table.column("value").to_pylist(),
            strict=True,
        ):
            marks[f"{run_id}\0{key}"] = value
    return exists, marks


class Importer:
    """Streams one source into the steppe server ``client`` talks to.

    Example::

        outcome = Importer(steppe.Client(uri), source).run()
    """

    def __init__(
        self,
        client: Client,
        source: Source,
        *,
        progress: bool = True,
        batch_points: int = BATCH_POINTS,
        artifacts: bool = True,
    ) -> None:
        self.client = client
        self.source = source
        self._conn = connect(client.tracking_uri)
        self._show = progress
        self._batch_points = batch_points
        self._artifacts = artifacts
        self.outcome = Outcome()
        self._source_tag = f"{source.kind}:{source.location}"
        self.runs: list[RunRecord] = []
        self.census: dict[tuple[str, str], int] = {}
        self.models: list[RegisteredModelRecord] = []
        self._logged: dict[str, tuple[dict[str, str], dict[str, str]]] = {}

    def run(self) -> Outcome:
        source, out = self.source, self.outcome
        experiments = source.experiments()
        runs = self.runs = source.runs()
        census = self.census = source.census()
        known = {e.source_id for e in experiments}
        exists, marks = existing_state(self.client, [r.run_id for r in runs])
        todo: list[RunRecord] = []
        for run in runs:
            mine = marks.get(f"{run.run_id}\0{SOURCE_TAG}")
            if run.run_id in exists and mine is None:
                out.differences.append(
                    f"run {run.run_id}: already in steppe and not imported from {source.kind} "
                    "(left as it is; its points were not sent)"
                )
            elif f"{run.run_id}\0{DONE_TAG}" in marks:
                out.skipped_runs.append(run.run_id)
            else:
                todo.append(run)
        for exp in experiments:
            if exp.lifecycle_stage == "deleted" and any(
                r.experiment_id == exp.source_id for r in todo
            ):
                out.differences.append(
                    f"experiment {exp.source_id} ({exp.name!r}) is deleted in the source; "
                    "its runs were imported into an active experiment of that name"
                )
            steppe_exp = self.client.set_experiment(exp.name)
            out.experiments[exp.source_id] = steppe_exp.experiment_id
            for key, value in exp.tags.items():
                self.client.set_experiment_tag(steppe_exp.experiment_id, key, value)
        for run in todo:
            if run.experiment_id not in known and run.experiment_id not in out.experiments:
                out.experiments[run.experiment_id] = self.client.set_experiment(
                    f"{source.kind}-{run.experiment_id}"
                ).experiment_id
        wanted = {r.run_id for r in todo}
        total: int | None = sum(n for (run_id, _), n in census.items() if run_id in wanted)
        if getattr(source, "observed", None) is not None:
            total = None  # the source cannot count its points before sending them
        bar = Progress(total, len(todo), enabled=self._show)
        by_id = {r.run_id: r for r in todo}
        for run in todo:
            self._create(run)
        self._stream_points(by_id, bar)
        bar.finish()
        every = {r.run_id: r for r in runs}
        self.models = source.registered_models()
        for model in self.models:
            self._model(model, every)
        out.differences.extend(source.problems())
        return out

    def _create(self, run: RunRecord) -> None:
        unary = self._conn.unary
        unary.create_run(
            run.run_id,
            self.outcome.experiments[run.experiment_id],
            run.run_name,
            run.start_time or 1,
            {SOURCE_TAG: self._source_tag},
            run.user_id,
        )
        self._log_fields(run.run_id, run.params, run.tags)
        self._logged[run.run_id] = (dict(run.params), dict(run.tags))

    def _name(self, run_id: str, what: str, key: str) -> str:
        """``key`` if steppe's key rule takes it, else with the offending characters
        replaced (listed in the report)."""
        try:
            return validation.check_name(what, key, f"{what} key")
        except errors.InvalidParameterValue:
            fixed = _BAD_KEY_CHARS.sub("_", key).strip("/").replace("..", "__")[:250] or "_"
            self.outcome.differences.append(
                f"run {run_id}: {what} {key!r} stored as {fixed!r} (steppe's key rule)"
            )
            return fixed

    def _log_fields(self, run_id: str, params: dict[str, str], tags: dict[str, str]) -> None:
        unary = self._conn.unary
        checked_params = [
            (self._name(run_id, "param", k), validation.check_param_value("p", v))
            for k, v in sorted(params.items())
        ]
        for start in range(0, len(checked_params), _PARAMS_PER_CALL):
            unary.log_params(run_id, checked_params[start : start + _PARAMS_PER_CALL])
        checked_tags = [
            (self._name(run_id, "tag", k), validation.check_tag_value("t", v))
            for k, v in sorted(tags.items())
        ]
        for start in range(0, len(checked_tags), _PARAMS_PER_CALL):
            unary.set_tags(run_id, checked_tags[start : start + _PARAMS_PER_CALL])

    def _stream_points(self, runs: dict[str, RunRecord], bar: Progress) -> None:
        closing: deque[RunStream] = deque()
        try:
            self._stream_runs(runs, bar, closing)
        except BaseException:
            # Interrupted: give the streams a moment to deliver what is in flight, then
            # leave; the next attempt resends it all and the server keeps each batch once.
            for stream in closing:
                stream.sender.shutdown(1.0)
            raise

    def _stream_runs(
        self, runs: dict[str, RunRecord], bar: Progress, closing: deque[RunStream]
    ) -> None:
        current: RunStream | None = None
        seen: set[str] = set()
        for piece in self.source.points(set(runs)):
            if current is None or piece.run_id != current.run_id:
                if current is not None:
                    current.close()
                    while len(closing) > RUNS_IN_FLIGHT:
                        self._finish(closing.popleft(), runs, bar)
                if piece.run_id in seen:
                    raise errors.SteppeError(
                        f"the {self.source.kind} reader returned run {piece.run_id} twice "
                        "(its points must come in one piece)"
                    )
                seen.add(piece.run_id)
                current = RunStream(self._conn, self.source.kind, piece.run_id, self._batch_points)
                closing.append(current)
            bar.add(current.add(piece))
        if current is not None:
            current.close()
        while closing:
            self._finish(closing.popleft(), runs, bar)
        for run_id in runs:
            if run_id not in seen:  # a run without points still ends and gets its files
                self._finalize(runs[run_id], 0, bar)

    def _finish(self, stream: RunStream, runs: dict[str, RunRecord], bar: Progress) -> None:
        stream.finish()
        for why, count in stream.dropped.items():
            self.outcome.differences.append(
                f"run {stream.run_id}: {count} point(s) not imported ({why})"
            )
        self._finalize(runs[stream.run_id], stream.points, bar)

    def _finalize(self, run: RunRecord, points: int, bar: Progress) -> None:
        """After every point is acked: artifacts, status, the completion mark, deletion."""
        if self._artifacts:
            self._copy_artifacts(run)
        params, tags = self._logged.get(run.run_id, ({}, {}))
        self._log_fields(  # what a reader found only while reading the points (hparams)
            run.run_id,
            {k: v for k, v in run.params.items() if params.get(k) != v},
            {k: v for k, v in run.tags.items() if tags.get(k) != v},
        )
        unary = self._conn.unary
        if run.status != "RUNNING" or run.end_time:
            unary.update_run(run.run_id, run.status, run.end_time, None)
        unary.set_tags(run.run_id, [(DONE_TAG, str(points))])
        if run.lifecycle_stage == "deleted":
            self.client.delete_run(run.run_id)
        self.outcome.imported_runs.append(run.run_id)
        self.outcome.points_sent += points
        bar.add(runs=1)

    def _copy_artifacts(self, run: RunRecord) -> None:
        folder = run.artifact_dir
        if run.fetch_artifacts is not None:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="steppe-import-") as tmp:
                run.fetch_artifacts(Path(tmp))
                self._upload(run.run_id, Path(tmp))
            return
        if folder is None:
            return
        if not folder.is_dir():
            if run.artifact_uri and not run.artifact_uri.startswith(("file:", "/", ".")):
                self.outcome.differences.append(
                    f"run {run.run_id}: artifacts at {run.artifact_uri} not copied "
                    "(only local artifact stores are read)"
                )
            return
        self._upload(run.run_id, folder)

    def _upload(self, run_id: str, folder: Path) -> None:
        if any(p.is_file() for p in folder.rglob("*")):
            self.client.log_artifacts(run_id, folder)

    # --- the registry --------------------------------------------------------------------

    def _model(self, model: RegisteredModelRecord, runs: dict[str, RunRecord]) -> None:
        client, out = self.client, self.outcome
        try:
            client.create_registered_model(model.name, model.tags, model.description or None)
        except errors.ResourceAlreadyExists:
            for key, value in model.tags.items():
                client.set_registered_model_tag(model.name, key, value)
        existing: dict[int, int] = {}
        for found in client.search_model_versions(f"name = '{_quote(model.name)}'"):
            vtags = found.tags or {}
            mark = vtags.get(VERSION_TAG)
            if mark is not None and vtags.get(SOURCE_TAG) == self._source_tag:
                existing[int(mark)] = int(found.version)
        mapping = out.models.setdefault(model.name, {})
        for record in sorted(model.versions, key=lambda v: v.version):
            if record.version in existing:
                mapping[record.version] = existing[record.version]
                continue
            source = self._version_source(record, runs)
            if source is None:
                out.differences.append(
                    f"model {model.name!r} version {record.version}: source {record.source!r} "
                    "is not inside an imported run's artifacts; not imported"
                )
                continue
            tags = {**record.tags, SOURCE_TAG: self._source_tag, VERSION_TAG: str(record.version)}
            try:
                created = client.create_model_version(
                    model.name,
                    source,
                    run_id=record.run_id or None,
                    tags=tags,
                    description=record.description or None,
                )
            except errors.SteppeError as exc:  # e.g. a LoggedModel steppe does not have
                out.differences.append(
                    f"model {model.name!r} version {record.version} (source {source!r}) "
                    f"not imported: {exc}"
                )
                continue
            mapping[record.version] = int(created.version)
            if record.stage and record.stage != "None":
                client.transition_model_version_stage(model.name, created.version, record.stage)
        for alias, number in model.aliases.items():
            if number in mapping:
                client.set_registered_model_alias(model.name, alias, mapping[number])
            else:
                out.differences.append(
                    f"model {model.name!r}: alias {alias!r} points at version {number}, "
                    "which was not imported"
                )
        renumbered = {s: d for s, d in mapping.items() if s != d}
        if renumbered:
            out.differences.append(
                f"model {model.name!r}: versions renumbered (source -> steppe) {renumbered}"
            )

    def _version_source(self, record: VersionRecord, runs: dict[str, RunRecord]) -> str | None:
        source = record.source
        if source.startswith(("runs:/", "models:/")):
            return source
        run = runs.get(record.run_id)
        if run is None or not run.artifact_uri:
            return None
        root = _strip_file(run.artifact_uri).rstrip("/")
        path = _strip_file(source)
        if path == root:
            return f"runs:/{run.run_id}/"
        if path.startswith(root + "/"):
            return f"runs:/{run.run_id}/{path[len(root) + 1 :]}"
        return None


def _strip_file(uri: str) -> str:
    if uri.startswith("file://"):
        return uri[len("file://") :]
    if uri.startswith("file:"):
        return uri[len("file:") :]
    return uri


def _quote(name: str) -> str:
    return name.replace("'", "\\'")
