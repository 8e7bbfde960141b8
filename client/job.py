"""Which run the processes of one distributed job share, decided without a race: from a job
key every process knows (a deterministic run id), else by rank 0 over ``torch.distributed``.
Knows nothing of the network: the caller creates the run (an idempotent get-or-create).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from typing import Any

from steppe import config, errors

__all__ = ["JobRuns", "process_group", "run_id_for"]

#: The namespace of job run ids: uuid5(namespace, "<experiment id>/<job key>/<n>").
NAMESPACE = uuid.UUID("5a1e4f7c-2d4b-4c1e-9f0e-57e99e000001")


def process_group() -> Any | None:
    """``torch.distributed`` when it is initialised with more than one rank, else None."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist if dist.get_world_size() > 1 else None


def run_id_for(experiment_id: str, key: str, n: int) -> str:
    """The id of the ``n``-th run (0, 1, ...) a job of this key starts in this experiment:
    every process of the job computes the same one, another experiment or job another."""
    return uuid.uuid5(NAMESPACE, f"{experiment_id}/{key}/{n}").hex


class JobRuns:
    """The runs one process starts as a part of its job. ``run_id(experiment_id, create)``
    gives the id of the next one, or None for a process on its own (then the caller makes a
    run of its own as ever). ``create(run_id)`` makes the run if it is not there yet; it is
    called by every process with a job key (get-or-create: the first creator's name and tags
    win) and by rank 0 alone with ``torch.distributed``.

    Each process counts the runs it starts, so a script that starts several runs in a row
    (a sweep in a loop) puts each into its own shared run on every rank alike.
    """

    def __init__(self) -> None:
        self._started = 0

    def run_id(self, experiment_id: str, create: Callable[[str], None]) -> str | None:
        key = config.job_key()
        if key is not None:
            run_id = run_id_for(experiment_id, key, self._started)
            create(run_id)
        else:
            dist = process_group()
            if dist is not None:
                run_id = self._broadcast(dist, create)
            elif config.world_size() > 1:
                raise errors.SteppeError(
                    f"this process is one of {config.world_size()} (WORLD_SIZE/SLURM_NTASKS/"
                    "OMPI_COMM_WORLD_SIZE/PMI_SIZE) but nothing names the job, so each process "
                    "would make a run of its own: set STEPPE_JOB_KEY to one value on every "
                    "process (or STEPPE_RUN_ID to an existing run), launch with torchrun "
                    "(TORCHELASTIC_RUN_ID; multi-node: pass --rdzv-id), or initialise "
                    "torch.distributed before start_run()"
                )
            else:
                return None
        self._started += 1
        return run_id

    @staticmethod
    def _broadcast(dist: Any, create: Callable[[str], None]) -> str:
        """Rank 0 picks the id and creates the run, then every rank learns the id from it."""
        if dist.get_rank() == 0:
            run_id = uuid.uuid4().hex
            try:
                create(run_id)
            except BaseException:
                dist.broadcast_object_list([""], src=0)  # the others wait in it: release them
                raise
            dist.broadcast_object_list([run_id], src=0)
            return run_id
        box: list[object] = [""]
        dist.broadcast_object_list(box, src=0)
        if not box[0]:
            raise errors.SteppeError("rank 0 could not create the run; see its error")
        return str(box[0])
