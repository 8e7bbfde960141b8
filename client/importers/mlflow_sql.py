"""Reads an MLflow tracking database (its SQLAlchemy store: ``sqlite:///mlflow.db``,
``postgresql://...``) in bulk: one query per table, metric points streamed in chunks in a
fixed order (run, key, step, timestamp, value: the order is what makes a resumed import's
batches line up; SQL sorts by the index's run, key, step, and ties are ordered here).
sqlite goes through the standard library's driver, anything else through SQLAlchemy with a
server-side cursor. Read-only: nothing is ever written.
"""

from __future__ import annotations

import math
import operator
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from steppe.importers.mlflow_files import local_path
from steppe.importers.records import (
    ExperimentRecord,
    Piece,
    RegisteredModelRecord,
    RunRecord,
    VersionRecord,
)

_CHUNK_ROWS = 65536
_POINTS_SQL = (
    "SELECT run_uuid, key, step, timestamp, value, is_nan FROM metrics ORDER BY run_uuid, key, step"
)


def _prefetched(chunks: Iterator[Sequence[tuple[Any, ...]]]) -> Iterator[Sequence[tuple[Any, ...]]]:
    """``chunks`` read ahead on a thread of their own, two at most: sqlite releases the GIL
    while it steps, so the database works while this thread turns rows into batches."""
    ahead: queue.Queue[Sequence[tuple[Any, ...]] | BaseException | None] = queue.Queue(2)
    stop = threading.Event()

    def offer(item: Sequence[tuple[Any, ...]] | BaseException | None) -> bool:
        while not stop.is_set():  # the consumer may have left: never block for good
            try:
                ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for chunk in chunks:
                if not offer(chunk):
                    return
            offer(None)
        except BaseException as exc:  # handed to the consumer, raised there
            offer(exc)
        finally:
            # Close the cursor on this thread: sqlite objects may not cross threads.
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=read, name="steppe-import-reader", daemon=True)
    thread.start()
    try:
        while (item := ahead.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _whole_ties(chunks: Iterator[Sequence[tuple[Any, ...]]]) -> Iterator[list[tuple[Any, ...]]]:
    """Chunks cut so that rows of one (run, key, step) never straddle two of them (the
    last group of a chunk waits for the next), so ``_piece`` can order ties itself."""
    carry: list[tuple[Any, ...]] = []
    for chunk in chunks:
        rows = carry + list(chunk) if carry else list(chunk)
        last = rows[-1][:3]
        cut = len(rows) - 1
        while cut > 0 and rows[cut - 1][:3] == last:
            cut -= 1
        if cut == 0:  # one group fills the chunk: keep collecting
            carry = rows
            continue
        carry = rows[cut:]
        yield rows[:cut]
    if carry:
        yield carry


def _piece(
    run_id: str,
    keys: Sequence[str],
    steps: Sequence[int],
    stamps: Sequence[int],
    values: Sequence[float],
    nans: Sequence[Any],
) -> Piece:
    """One run's rows as a Piece, in the full order (key, step, timestamp, value, is_nan).

    SQL sorts by (run, key, step) only, which its index gives for free (the full ORDER BY
    costs a second sort, twice the read time); points sharing a key and step, rare, are
    ordered here, so a re-read gives the same sequence even if the rows moved on disk.
    """
    keys, steps, stamps = list(keys), list(steps), list(stamps)
    vals, flags = list(values), list(nans)
    count = len(keys)
    if any(map(operator.eq, steps[1:], steps[:-1])):
        order = sorted(
            range(count), key=lambda i: (keys[i], steps[i], stamps[i], vals[i], bool(flags[i]))
        )
        keys = [keys[i] for i in order]
        steps = [steps[i] for i in order]
        stamps = [stamps[i] for i in order]
        vals = [vals[i] for i in order]
        flags = [flags[i] for i in order]
    if any(flags):
        vals = [math.nan if n else v for v, n in zip(vals, flags, strict=True)]
    return Piece(run_id, keys, steps, stamps, vals)


def redact(uri: str) -> str:
    """The URI without a password (it goes into tags and reports)."""
    head, sep, rest = uri.partition("://")
    if sep and "@" in rest:
        creds, _, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        return f"{head}://{user}@{host}"
    return uri


class SqlSource:
    """An MLflow database.

    Example::

        source = SqlSource("sqlite:///mlflow.db")
    """

    kind = "mlflow"

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.location = redact(uri)
        self._problems: list[str] = []
        self._engine: Any = None
        if uri.startswith("sqlite:///"):
            path = Path(uri[len("sqlite:///") :])
            if not path.is_file():
                raise FileNotFoundError(f"no MLflow database at {path}")
            self.location = f"sqlite:///{path.resolve()}"
            self._base = path.resolve().parent
        else:
            self._base = Path.cwd()

    def _connect(self) -> Any:
        if self.uri.startswith("sqlite:///"):
            import sqlite3

            path = Path(self.uri[len("sqlite:///") :]).resolve()
            return sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        if self._engine is None:
            import sqlalchemy

            self._engine = sqlalchemy.create_engine(self.uri)
        return self._engine.raw_connection()

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        conn = self._connect()
        try:
            cur = conn.cursor()
            cur.execute(sql)
            return [tuple(r) for r in cur.fetchall()]
        finally:
            conn.close()

    def _stream(self, sql: str) -> Iterator[Sequence[tuple[Any, ...]]]:
        """Rows in chunks, never the whole result in memory (a server-side cursor)."""
        if self.uri.startswith("sqlite:///"):
            yield from _prefetched(self._sqlite_chunks(sql))
            return
        self._connect()
        with self._engine.connect() as conn:
            result = conn.execution_options(stream_results=True).exec_driver_sql(sql)
            yield from result.partitions(_CHUNK_ROWS)

    def _sqlite_chunks(self, sql: str) -> Iterator[Sequence[tuple[Any, ...]]]:
        conn = self._connect()
        try:
            cur = conn.cursor()
            cur.execute(sql)
            while rows := cur.fetchmany(_CHUNK_ROWS):
                yield rows
        finally:
            conn.close()

    def experiments(self) -> list[ExperimentRecord]:
        tags: dict[str, dict[str, str]] = {}
        for exp_id, key, value in self._rows(
            "SELECT experiment_id, key, value FROM experiment_tags"
        ):
            tags.setdefault(str(exp_id), {})[key] = value or ""
        return [
            ExperimentRecord(str(i), name, tags.get(str(i), {}), stage or "active")
            for i, name, stage in self._rows(
                "SELECT experiment_id, name, lifecycle_stage FROM experiments "
                "ORDER BY experiment_id"
            )
        ]

    def runs(self) -> list[RunRecord]:
        params: dict[str, dict[str, str]] = {}
        for run_id, key, value in self._rows("SELECT run_uuid, key, value FROM params"):
            params.setdefault(run_id, {})[key] = value or ""
        tags: dict[str, dict[str, str]] = {}
        for run_id, key, value in self._rows("SELECT run_uuid, key, value FROM tags"):
            tags.setdefault(run_id, {})[key] = value or ""
        out = []
        for row in self._rows(
            "SELECT run_uuid, name, status, start_time, end_time, lifecycle_stage, user_id, "
            "artifact_uri, experiment_id FROM runs ORDER BY run_uuid"
        ):
            run_id, name, status, start, end, stage, user, artifact_uri, exp_id = row
            out.append(
                RunRecord(
                    run_id=run_id,
                    experiment_id=str(exp_id),
                    run_name=name or "",
                    status=status or "RUNNING",
                    start_time=int(start or 0),
                    end_time=int(end) if end else None,
                    lifecycle_stage=stage or "active",
                    user_id=user or "",
                    params=params.get(run_id, {}),
                    tags=tags.get(run_id, {}),
                    artifact_dir=local_path(artifact_uri, self._base) if artifact_uri else None,
                    artifact_uri=artifact_uri or "",
                )
            )
        return out

    def census(self) -> dict[tuple[str, str], int]:
        return {
            (run_id, key): int(n)
            for run_id, key, n in self._rows(
                "SELECT run_uuid, key, count(*) FROM metrics GROUP BY run_uuid, key"
            )
        }

    def points(self, run_ids: set[str]) -> Iterator[Piece]:
        for rows in _whole_ties(self._stream(_POINTS_SQL)):
            runs, keys, steps, stamps, values, nans = zip(*rows, strict=True)
            start = 0
            count = len(runs)
            while start < count:
                run_id = runs[start]
                end = start + 1
                # rows are sorted by run: find where this run's rows end in the chunk
                if runs[count - 1] == run_id:
                    end = count
                else:
                    while runs[end] == run_id:
                        end += 1
                if run_id in run_ids:
                    yield _piece(
                        run_id,
                        keys[start:end],
                        steps[start:end],
                        stamps[start:end],
                        values[start:end],
                        nans[start:end],
                    )
                start = end

    def registered_models(self) -> list[RegisteredModelRecord]:
        try:
            models = self._rows("SELECT name, description FROM registered_models ORDER BY name")
        except Exception as exc:  # an old schema without the registry: nothing to import
            self._problems.append(f"registry not read: {exc}")
            return []
        out = {name: RegisteredModelRecord(name, desc or "") for name, desc in models}
        for key, value, name in self._rows("SELECT key, value, name FROM registered_model_tags"):
            if name in out:
                out[name].tags[key] = value or ""
        versions: dict[tuple[str, int], VersionRecord] = {}
        for name, version, desc, stage, source, run_id in self._rows(
            "SELECT name, version, description, current_stage, source, run_id "
            "FROM model_versions WHERE current_stage != 'Deleted_Internal' ORDER BY name, version"
        ):
            record = VersionRecord(int(version), source or "", run_id or "", desc or "", stage)
            versions[(name, int(version))] = record
            if name in out:
                out[name].versions.append(record)
        for key, value, name, version in self._rows(
            "SELECT key, value, name, version FROM model_version_tags"
        ):
            if (name, int(version)) in versions:
                versions[(name, int(version))].tags[key] = value or ""
        for alias, version, name in self._rows(
            "SELECT alias, version, name FROM registered_model_aliases"
        ):
            if name in out:
                out[name].aliases[alias] = int(version)
        return list(out.values())

    def problems(self) -> list[str]:
        return list(self._problems)
