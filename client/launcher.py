"""Who this process is in a distributed job, read from the launcher's environment variables.

One table (``LAUNCHERS``) names, per launcher, the variables for rank, local rank, world size,
node rank and restart count, and ``job_key`` the variables that name the job. Pure functions
of an environment mapping: no network, no torch import.

    identity = detect(os.environ)   # WriterIdentity(rank=3, world_size=8, launcher="torchrun")
    job_key(os.environ)                # "torchelastic:9f1c..." or None
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "LAUNCHERS",
    "Launcher",
    "WriterIdentity",
    "current",
    "detect",
    "job_key",
    "job_run_id",
    "nodes",
    "writer_info",
    "writer_key",
]


@dataclass(frozen=True)
class Launcher:
    """The variables one launcher sets in each process it starts. ``detect`` is the variable
    whose presence says this launcher started us; None means "not set by this launcher"."""

    name: str
    detect: str
    rank: str | None
    local_rank: str | None
    world_size: str | None
    node_rank: str | None
    local_world_size: str | None = None
    attempt: str | None = None
    nodes: str | None = None


#: First match wins: torchrun inside srun is torchrun (its RANK is the job's rank, Slurm's
#: SLURM_PROCID is the node's task); mpirun under Slurm is MPI. Lightning's own launcher
#: (and torch.distributed.launch, accelerate, DeepSpeed) set the generic RANK/LOCAL_RANK.
LAUNCHERS: tuple[Launcher, ...] = (
    Launcher(
        "torchrun",
        detect="TORCHELASTIC_RUN_ID",
        rank="RANK",
        local_rank="LOCAL_RANK",
        world_size="WORLD_SIZE",
        node_rank="GROUP_RANK",
        local_world_size="LOCAL_WORLD_SIZE",
        attempt="TORCHELASTIC_RESTART_COUNT",
        nodes="GROUP_WORLD_SIZE",
    ),
    Launcher(
        "openmpi",
        detect="OMPI_COMM_WORLD_RANK",
        rank="OMPI_COMM_WORLD_RANK",
        local_rank="OMPI_COMM_WORLD_LOCAL_RANK",
        world_size="OMPI_COMM_WORLD_SIZE",
        node_rank=None,  # OMPI_COMM_WORLD_NODE_RANK is a rank on the node, not the node's
        local_world_size="OMPI_COMM_WORLD_LOCAL_SIZE",
    ),
    Launcher(
        "mpich",
        detect="PMI_RANK",
        rank="PMI_RANK",
        local_rank="MPI_LOCALRANKID",
        world_size="PMI_SIZE",
        node_rank=None,
        local_world_size="MPI_LOCALNRANKS",
    ),
    Launcher(
        "slurm",
        detect="SLURM_PROCID",
        rank="SLURM_PROCID",
        local_rank="SLURM_LOCALID",
        world_size="SLURM_NTASKS",
        node_rank="SLURM_NODEID",
        attempt="SLURM_RESTART_COUNT",
        nodes="SLURM_NNODES",
    ),
    Launcher(
        "lightning",
        detect="NODE_RANK",
        rank="RANK",
        local_rank="LOCAL_RANK",
        world_size="WORLD_SIZE",
        node_rank="NODE_RANK",
    ),
    Launcher(
        "env",
        detect="RANK",
        rank="RANK",
        local_rank="LOCAL_RANK",
        world_size="WORLD_SIZE",
        node_rank="NODE_RANK",
        local_world_size="LOCAL_WORLD_SIZE",
    ),
)


@dataclass(frozen=True)
class WriterIdentity:
    """One process's place in its job. Rank fields are None for a process no launcher
    started (a single-process run); ``attempt`` counts restarts (0 the first time)."""

    host: str
    pid: int
    rank: int | None = None
    local_rank: int | None = None
    world_size: int | None = None
    node_rank: int | None = None
    attempt: int = 0
    launcher: str = ""
    local_world_size: int | None = None
    nodes: int | None = None

    @property
    def distributed(self) -> bool:
        """Part of a job of more than one process."""
        return (self.world_size or 1) > 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(environ: Mapping[str, str], name: str | None) -> int | None:
    if name is None:
        return None
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        return None  # a launcher variable we cannot read is a variable not set


def detect(environ: Mapping[str, str] | None = None) -> WriterIdentity:
    """This process's identity from the first launcher of ``LAUNCHERS`` whose variable is
    set (``environ`` defaults to os.environ)."""
    env = os.environ if environ is None else environ
    host, pid = socket.gethostname(), os.getpid()
    for launcher in LAUNCHERS:
        if launcher.detect not in env:
            continue
        rank = _int(env, launcher.rank)
        world_size = _int(env, launcher.world_size)
        node_rank = _int(env, launcher.node_rank)
        local_world_size = _int(env, launcher.local_world_size)
        nodes = _int(env, launcher.nodes)
        if launcher.name == "slurm":
            # srun sets the step's task count; in a batch script only the allocation's.
            world_size = _int(env, "SLURM_STEP_NUM_TASKS") or world_size
        return WriterIdentity(
            host=host,
            pid=pid,
            rank=rank,
            local_rank=_int(env, launcher.local_rank),
            world_size=world_size,
            node_rank=node_rank,
            attempt=_int(env, launcher.attempt) or 0,
            launcher=launcher.name,
            local_world_size=local_world_size,
            nodes=nodes,
        )
    return WriterIdentity(host=host, pid=pid)


def nodes(identity: WriterIdentity) -> int:
    """How many machines the job spans, as far as the variables tell (1 when unknown)."""
    if identity.nodes is not None:
        return max(1, identity.nodes)
    if identity.node_rank:
        return identity.node_rank + 1  # at least this many: node ranks count from 0
    if identity.world_size and identity.local_world_size:
        return max(1, -(-identity.world_size // identity.local_world_size))
    return 1


def job_key(environ: Mapping[str, str] | None = None, explicit: str | None = None) -> str | None:
    """What every process of one job shares and two jobs never do, or None: ``explicit``
    (STEPPE_JOB_KEY, read by steppe.config), else TORCHELASTIC_RUN_ID (unless empty, or
    torchrun's ``none`` for a multi-node launch without --rdzv-id), else Slurm's job id
    (array job and task, step)."""
    env = os.environ if environ is None else environ
    if explicit:
        return f"key:{explicit}"
    elastic = env.get("TORCHELASTIC_RUN_ID", "").strip()
    if elastic and elastic.lower() != "none":
        return f"torchelastic:{elastic}"
    job = env.get("SLURM_JOB_ID", "").strip()
    if job:
        array_job = env.get("SLURM_ARRAY_JOB_ID", "").strip()
        array_task = env.get("SLURM_ARRAY_TASK_ID", "").strip()
        key = f"slurm:{array_job}_{array_task}" if array_job and array_task else f"slurm:{job}"
        step = env.get("SLURM_STEP_ID", "").strip()
        return f"{key}.{step}" if step else key
    return None


#: NAMESPACE for run ids derived from a job key (uuid5 of it): fixed forever, so every rank
#: of every version of steppe derives the same id.
RUN_ID_NAMESPACE = uuid.UUID("6c1f0d2e-53a4-4c8e-9b0e-7a5d2f6e1c30")


def job_run_id(experiment: str, key: str, ordinal: int) -> str:
    """The run the ``ordinal``-th start_run (1, 2, ...) of each process of job ``key`` joins,
    in this experiment ("name:<name>" or "id:<id>"): 32 hex digits, like MLflow's run ids."""
    return uuid.uuid5(RUN_ID_NAMESPACE, f"{experiment}\n{key}\n{ordinal}").hex


_key_lock = threading.RLock()
_key: tuple[int, str] | None = None


def writer_key() -> str:
    """This process's writer key (uuid4 hex), made on first use; a forked child makes its own."""
    global _key
    with _key_lock:
        if _key is None or _key[0] != os.getpid():
            _key = (os.getpid(), uuid.uuid4().hex)
        return _key[1]


_current: WriterIdentity | None = None


def current(refresh: bool = False) -> WriterIdentity:
    """This process's identity, detected on first use (again with ``refresh``: launchers such
    as Lightning set RANK only once training starts) and in a forked child."""
    global _current
    with _key_lock:
        if refresh or _current is None or _current.pid != os.getpid():
            _current = detect()
        return _current


def writer_info(identity: WriterIdentity | None = None) -> dict[str, Any]:
    """The Writer message's fields for this process (JSON-able: journaled calls carry it)."""
    ident = identity if identity is not None else current()
    return {
        "writer_key": writer_key(),
        "host": ident.host,
        "pid": ident.pid,
        "rank": ident.rank,
        "local_rank": ident.local_rank,
        "world_size": ident.world_size,
        "node_rank": ident.node_rank,
        "attempt": ident.attempt,
        "launcher": ident.launcher,
    }
