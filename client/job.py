"""The run that the processes of one distributed job share, decided at ``start_run``.

In order (after STEPPE_RUN_ID/MLFLOW_RUN_ID, which fluent.start_run honours first):

1. a job key (steppe.launcher.job_key: STEPPE_JOB_KEY, TORCHELASTIC_RUN_ID, Slurm's job id):
   the n-th ``start_run`` of every process of the job derives the same run id, and every
   process creates-or-joins it (the server's CreateRun is an idempotent get-or-create);
2. torch.distributed initialised with more than one process: rank 0 creates the run and
   broadcasts its id (a collective: every rank must call start_run);
3. more than one process (WORLD_SIZE & co.) and neither: an error naming what to set, never a
   silent run per rank.

It never imports torch: torch.distributed is used only if the program imported it already.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from steppe import config, errors, launcher

__all__ = ["JobRun", "resolve", "torch_group"]


@dataclass(frozen=True)
class JobRun:
    """How this process finds its job's run: ``run_id`` to create-or-join, or (``broadcast``)
    the id rank 0 creates and sends to the others through torch.distributed."""

    run_id: str | None
    source: str  # "job key <key>", "torch.distributed", "" (a run of this process alone)
    broadcast: bool = False


_lock = threading.Lock()
_ordinals: dict[tuple[int, str], int] = {}


def _next_ordinal(key: str) -> int:
    """1 for the first start_run of this process under ``key``, then 2, ... (all ranks of
    an SPMD program start their runs in the same order, so the n-th ones meet)."""
    with _lock:
        slot = (os.getpid(), key)
        _ordinals[slot] = _ordinals.get(slot, 0) + 1
        return _ordinals[slot]


def torch_group() -> Any | None:
    """torch.distributed, if this program imported and initialised it with >1 process."""
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return None
    try:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return dist
    except (RuntimeError, ValueError):  # a half-initialised group: treat as absent
        return None
    return None


_MISSING_KEY = (
    "this process is rank {rank} of {world} ({launcher} variables), but nothing names the job, "
    "so its ranks cannot meet in one run: set STEPPE_JOB_KEY to a value shared by every rank "
    "and unique to the job (e.g. STEPPE_JOB_KEY=$SLURM_JOB_ID), or launch with torchrun "
    "--rdzv-id=<job id> (or --standalone), or call steppe.start_run() after "
    "torch.distributed.init_process_group() on every rank, or pass run_id= / set STEPPE_RUN_ID"
)
_MISSING_SERVER = (
    "this job runs on {nodes} machines: every rank must log to one steppe server, but no "
    "server address is set ({where}); start one that every node can reach (steppe server "
    "--host 0.0.0.0 --token-file ...) and set STEPPE_TRACKING_URI=http://<that host>:<port> "
    "for every rank"
)


def resolve(
    experiment: str,
    identity: launcher.WriterIdentity,
    tracking_uri: str | None,
    environ: Mapping[str, str] | None = None,
    explicit_key: str | None = None,
) -> JobRun:
    """How this ``start_run`` (without a run id) finds its run; ``experiment`` names the
    experiment as the program did ("name:<name>" or "id:<id>"). Raises SteppeError for a
    distributed process that cannot meet its job's other ranks."""
    env = os.environ if environ is None else environ
    if identity.distributed and launcher.nodes(identity) > 1 and not _is_server(tracking_uri):
        where = f"the tracking URI is {tracking_uri!r}" if tracking_uri else "STEPPE_TRACKING_URI"
        raise errors.SteppeError(
            _MISSING_SERVER.format(nodes=launcher.nodes(identity), where=where)
        )
    explicit = explicit_key if explicit_key is not None else config.job_key()
    key = launcher.job_key(env, explicit)
    # A single process joins by key only when asked to, or under torchrun (whose run id is
    # new per launch, so a restart continues the run and a new launch makes a new one);
    # Slurm's job id alone would merge two scripts run one after the other in one job.
    if key is not None and (
        identity.distributed or bool(explicit) or identity.launcher == "torchrun"
    ):
        ordinal = _next_ordinal(key)
        return JobRun(launcher.job_run_id(experiment, key, ordinal), f"job key {key}")
    if torch_group() is not None:
        return JobRun(None, "torch.distributed", broadcast=True)
    if identity.distributed:
        raise errors.SteppeError(
            _MISSING_KEY.format(
                rank=identity.rank if identity.rank is not None else "?",
                world=identity.world_size,
                launcher=identity.launcher or "launcher",
            )
        )
    return JobRun(None, "")


def broadcast_run_id(run_id: str | None) -> str:
    """Rank 0's run id, sent to every rank (rank 0 passes it, the others None)."""
    dist = torch_group()
    if dist is None:
        raise errors.SteppeError("torch.distributed is no longer initialised")
    box = [run_id]
    dist.broadcast_object_list(box, src=0)
    received = box[0]
    if not isinstance(received, str):
        raise errors.SteppeError(f"rank 0 broadcast no run id (got {received!r})")
    return received


def _is_server(tracking_uri: str | None) -> bool:
    return bool(tracking_uri) and str(tracking_uri).startswith(("http://", "https://"))
