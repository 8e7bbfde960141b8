"""Delivers orphaned spools: batches, journaled calls and artifacts that a killed, crashed or
offline process logged but the server never acked. Replays reuse each batch's stream id and
seq, so the server keeps every point exactly once however often a replay is interrupted and
repeated; an artifact is uploaded again to the same path.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from steppe import config, errors, wire
from steppe.channel import open_channel
from steppe.discovery import resolve
from steppe.journal import SpooledFiles, run_op
from steppe.spool import Orphan, orphans

log = logging.getLogger("steppe.sync")

#: Refusals a later try would meet again: the artifact is reported and dropped.
_FINAL = (errors.InvalidParameterValue, errors.ResourceDoesNotExist)


@dataclass(frozen=True)
class Delivery:
    spool_dir: Path
    tracking_uri: str
    batches: int
    points: int
    artifacts: int = 0


def runs_in(orphan: Orphan) -> set[str]:
    """The run ids an orphaned spool holds points or journaled calls for."""
    runs: set[str] = set()
    for _, payload in orphan.records():
        runs.update(wire.MetricBatch.FromString(payload).run_ids)
    for op in orphan.ops():
        args = op.get("args")
        if isinstance(args, dict) and isinstance(args.get("run_id"), str):
            runs.add(args["run_id"])
    return runs


def replay(orphan: Orphan, timeout_s: float, tracking_uri: str | None = None) -> Delivery | None:
    """Send one orphaned spool and delete it once the server acked all of it.

    ``tracking_uri`` sends it to that server instead of the one it was logged for.

    Returns None if another process is replaying it already. Raises ServerUnavailable or
    FlushTimeout if it could not be delivered (the spool stays for the next try).
    """
    claim = orphan.claim()
    if claim is None:
        return None
    try:
        records = [wire.MetricBatch.FromString(payload) for _, payload in orphan.records()]
        ops = orphan.ops()
        if not records and not ops:
            orphan.remove(claim)
            claim = -1
            return Delivery(orphan.dir, tracking_uri or orphan.tracking_uri, 0, 0)
        target = tracking_uri or orphan.tracking_uri
        endpoint = resolve(target)
        last_seq = records[-1].seq if records else 0
        with open_channel(endpoint) as channel:
            stub = wire.IngestStub(channel)  # type: ignore[no-untyped-call]
            unary = wire.Unary(stub, timeout_s=timeout_s)
            files = SpooledFiles(orphan.dir, lambda: endpoint.http_url)
            artifacts = 0
            for op in ops:  # runs must exist before their points (and artifacts) arrive
                call = {k: v for k, v in op.items() if k != "before_seq"}
                try:
                    run_op(unary, call, files)
                    artifacts += call["op"] == "log_artifact"
                except errors.ServerUnavailable:
                    raise
                except errors.SteppeError as exc:  # e.g. a param conflict: say it, go on
                    if call["op"] == "log_artifact" and not isinstance(exc, _FINAL):
                        raise  # e.g. the server's disk is full: keep it for the next try
                    log.error("steppe sync: %s from %s rejected: %s", call["op"], orphan.dir, exc)

            def batches() -> Iterator[wire.MetricBatch]:
                yield from records

            acked = 0
            try:
                for ack in stub.StreamMetrics(batches(), timeout=timeout_s) if records else ():
                    for rej in ack.rejected:
                        log.error("steppe sync: batch %d rejected: %s", rej.seq, rej.message)
                    acked = max(acked, ack.acked_seq)
                    if acked >= last_seq:
                        break
            except grpc.RpcError as exc:
                raise wire.error_from_rpc(exc) from None
        if acked < last_seq:
            raise errors.FlushTimeout(
                f"the server acked up to batch {acked} of {last_seq} from {orphan.dir}"
            )
        orphan.remove(claim)
        claim = -1
        return Delivery(orphan.dir, target, len(records), sum(b.count for b in records), artifacts)
    finally:
        if claim >= 0:
            os.close(claim)


def sync_all(
    spool_root: Path | None = None, tracking_uri: str | None = None, timeout_s: float = 60.0
) -> list[Delivery]:
    """Replay every orphaned spool (only those for ``tracking_uri`` when given)."""
    root = spool_root or config.spool_dir()
    done = []
    for orphan in orphans(root):
        if tracking_uri is not None and orphan.tracking_uri != tracking_uri:
            continue
        delivery = replay(orphan, timeout_s)
        if delivery is not None:
            done.append(delivery)
    return done


def sync_in_background(tracking_uri: str) -> None:
    """At a connection's start: deliver what earlier processes left for the same server."""

    def work() -> None:
        try:
            for d in sync_all(tracking_uri=tracking_uri):
                log.info("steppe: delivered %d points left in %s", d.points, d.spool_dir)
        except errors.SteppeError as exc:  # best effort; `steppe sync` reports it
            log.warning("steppe: could not deliver an earlier spool: %s", exc)

    if orphans(config.spool_dir()):
        threading.Thread(target=work, name="steppe-sync", daemon=True).start()
