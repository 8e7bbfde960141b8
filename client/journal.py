"""Run-lifecycle calls (create run, params, tags, end of run) that did not reach the server.

In offline mode (STEPPE_MODE=offline), or once a call found the server unreachable, calls
are journaled in the sender's spool instead, answered locally, and replayed in order, before
any metric batch, when the sender connects or `steppe sync` runs. Every journaled call is
idempotent on the server (runs have client-chosen ids), so replaying twice is harmless.
An artifact logged meanwhile is journaled as a copy of its bytes in the spool plus a record
(``log_artifact``); its upload replaces the same path, so it too may be replayed twice.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from steppe import errors, wire
from steppe.entities import Experiment, Run, RunData, RunInfo

log = logging.getLogger("steppe.journal")

#: Experiment ids that stand for "the experiment called <name>", resolved at replay.
NAME_PREFIX = "name:"

Op = dict[str, Any]


class _CreateRunArgs(TypedDict):
    run_id: str
    experiment_id: str
    run_name: str
    start_time: int
    tags: dict[str, str]
    user_id: str


class _UpdateRunArgs(TypedDict):
    run_id: str
    status: str | None
    end_time: int | None
    run_name: str | None


@dataclass(frozen=True)
class SpooledFiles:
    """Where a replay finds the artifact files journaled with the calls (a spool dir), and
    the HTTP address of the server to send them to (asked for only when one is sent)."""

    spool_dir: Path
    http_url: Callable[[], str]


def artifact_op(run_id: str, path: str, file: str) -> Op:
    """The journal record of an artifact kept in the spool as ``file`` (Spool.add_file)."""
    return {"op": "log_artifact", "args": {"run_id": run_id, "path": path, "file": file}}


def _send_artifact(args: dict[str, Any], files: SpooledFiles | None) -> None:
    from steppe import artifacts, spool

    if files is None:
        raise errors.SteppeError("a journaled artifact can only be replayed from its spool")
    try:
        local = spool.artifact_file(files.spool_dir, str(args["file"]))
    except ValueError as exc:
        raise errors.SteppeError(str(exc)) from None
    path = artifacts.check_file_path("path", str(args["path"]))
    try:
        artifacts.upload_file(files.http_url(), str(args["run_id"]), local, path)
    except FileNotFoundError:
        # An earlier replay uploaded it and was cut off before the journal was removed.
        log.debug("steppe: artifact %s of run %s was delivered already", path, args["run_id"])
        return
    local.unlink(missing_ok=True)  # delivered: it no longer counts against the spool's cap


def run_op(unary: wire.Unary, op: Op, files: SpooledFiles | None = None) -> None:
    """Replay one journaled call against a server (raises steppe.errors); ``files`` is
    needed for a journaled artifact."""
    kind, args = op["op"], dict(op["args"])
    if kind == "create_run":
        experiment_id = args["experiment_id"]
        if experiment_id.startswith(NAME_PREFIX):
            args["experiment_id"] = unary.set_experiment(
                experiment_id[len(NAME_PREFIX) :]
            ).experiment_id
        unary.create_run(**args)
    elif kind == "update_run":
        unary.update_run(**args)
    elif kind == "log_params":
        unary.log_params(args["run_id"], [tuple(p) for p in args["params"]])
    elif kind == "set_tags":
        unary.set_tags(args["run_id"], [tuple(t) for t in args["tags"]])
    elif kind == "delete_tag":
        with contextlib.suppress(errors.ResourceDoesNotExist):  # an earlier replay did it
            unary.delete_tag(**args)
    elif kind == "log_artifact":
        _send_artifact(args, files)
    else:
        raise errors.SteppeError(f"unknown journaled call {kind!r}")


class ResilientUnary:
    """The lifecycle calls the fluent API and Client use, with the journal as fallback.

    ``direct()`` gives the live ``wire.Unary`` (raises ServerUnavailable when there is
    none); ``journal(op)`` hands a call to the sender, which reports whether calls are
    still pending (then later calls queue behind them, to keep their order).
    """

    def __init__(
        self,
        direct: Callable[[], wire.Unary],
        journal: Callable[[Op], None],
        pending: Callable[[], bool],
        offline: bool,
    ) -> None:
        self._direct = direct
        self._journal = journal
        self._pending = pending
        self._offline = offline
        self._warned = False

    def _call(self, op: Op) -> bool:
        """True if the call went to the server; False if it was journaled."""
        if self._offline or self._pending():
            self._journal(op)
            return False
        try:
            run_op(self._direct(), op)
            return True
        except errors.ServerUnavailable as exc:
            if not self._warned:
                log.warning(
                    "steppe: %s; logging continues locally and is sent when the server is back", exc
                )
                self._warned = True
            self._journal(op)
            return False

    # calls that need the server's answer ---------------------------------------------------

    def create_experiment(
        self, name: str, artifact_location: str, tags: Mapping[str, str] | None
    ) -> Experiment:
        return self._direct().create_experiment(name, artifact_location, tags)

    def set_experiment(self, name: str) -> Experiment:
        if not self._offline:
            try:
                return self._direct().set_experiment(name)
            except errors.ServerUnavailable:
                pass  # resolved by name when the journal is replayed
        return Experiment(NAME_PREFIX + name, name, "", "active")

    def get_run(self, run_id: str) -> Run:
        return self._direct().get_run(run_id)

    # calls that can wait -------------------------------------------------------------------

    def create_run(
        self,
        run_id: str,
        experiment_id: str,
        run_name: str,
        start_time: int,
        tags: Mapping[str, str] | None,
        user_id: str,
    ) -> Run:
        args: _CreateRunArgs = {
            "run_id": run_id,
            "experiment_id": experiment_id,
            "run_name": run_name,
            "start_time": start_time,
            "tags": dict(tags or {}),
            "user_id": user_id,
        }
        if self._offline or self._pending():
            self._journal({"op": "create_run", "args": args})
        else:
            try:
                direct = self._direct()
                if experiment_id.startswith(NAME_PREFIX):  # named while the server was down
                    name = experiment_id[len(NAME_PREFIX) :]
                    args["experiment_id"] = direct.set_experiment(name).experiment_id
                return direct.create_run(**args)
            except errors.ServerUnavailable:
                args["experiment_id"] = experiment_id  # resolved by name at replay
                self._call({"op": "create_run", "args": args})  # warns, journals
        info = RunInfo(
            run_id, experiment_id, run_name, "RUNNING", start_time, None, "active", "", user_id
        )
        return Run(info, RunData(tags={"mlflow.runName": run_name, **(tags or {})}))

    def update_run(
        self, run_id: str, status: str | None, end_time: int | None, run_name: str | None
    ) -> Run | None:
        args: _UpdateRunArgs = {
            "run_id": run_id,
            "status": status,
            "end_time": end_time,
            "run_name": run_name,
        }
        if self._offline or self._pending():
            self._journal({"op": "update_run", "args": args})
            return None
        try:
            return self._direct().update_run(**args)
        except errors.ServerUnavailable:
            self._call({"op": "update_run", "args": args})
            return None

    def log_params(self, run_id: str, params: Sequence[tuple[str, str]]) -> None:
        self._call({"op": "log_params", "args": {"run_id": run_id, "params": list(params)}})

    def set_tags(self, run_id: str, tags: Sequence[tuple[str, str]]) -> None:
        self._call({"op": "set_tags", "args": {"run_id": run_id, "tags": list(tags)}})

    def delete_tag(self, run_id: str, key: str) -> None:
        self._call({"op": "delete_tag", "args": {"run_id": run_id, "key": key}})
