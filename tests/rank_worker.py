"""One rank of a distributed job, for tests/test_ranks.py: run with a launcher's environment
(torchrun's, Slurm's, ...) and STEPPE_TRACKING_URI. Prints one JSON line per event.

    python tests/rank_worker.py --steps 50 [--wait-file F] [--param lr=0.1] [--status FINISHED]

Logs ``loss`` = step + rank and ``acc`` = rank at steps 0..steps-1 (from --first-step), then
ends its run with --status. With --wait-file it logs the first half, prints "waiting", and
waits (polling, with a deadline) for that file before the rest: the test kills it there, or
lets it finish late.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import steppe


def say(**event: object) -> None:
    print(json.dumps(event), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--first-step", type=int, default=0)
    parser.add_argument("--wait-file", default="")
    parser.add_argument("--param", action="append", default=[])
    parser.add_argument("--status", default="FINISHED")
    parser.add_argument("--experiment", default="ranks")
    parser.add_argument("--torch", action="store_true", help="init torch.distributed (gloo)")
    parser.add_argument("--nested", action="store_true", help="a nested run first")
    args = parser.parse_args()
    if args.torch:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        if os.environ.get("WORKER_FORGET_JOB_KEY"):
            os.environ["TORCHELASTIC_RUN_ID"] = "none"  # exercise the broadcast path
    rank = int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)
    steppe.set_experiment(args.experiment)
    try:
        run = steppe.start_run(run_name=f"rank-{rank}", tags={"started_by": str(rank)})
    except steppe.errors.SteppeError as exc:
        say(event="error", error=str(exc))
        raise SystemExit(3) from None
    say(event="started", run_id=run.info.run_id, rank=rank)
    if args.nested:
        with steppe.start_run(nested=True) as child:
            steppe.log_metric("eval", float(rank), step=0)
        say(event="nested", run_id=child.info.run_id)
    for item in args.param:
        key, _, value = item.partition("=")
        try:
            steppe.log_param(key, value)
            say(event="param", key=key, ok=True)
        except steppe.errors.SteppeError as exc:
            say(event="param", key=key, ok=False, code=exc.error_code, error=str(exc))
    steps = range(args.first_step, args.first_step + args.steps)
    half = args.first_step + args.steps // 2
    for step in steps:
        if args.wait_file and step == half:
            steppe.flush()
            say(event="waiting", step=step)
            deadline = time.monotonic() + 60
            while not Path(args.wait_file).exists():
                if time.monotonic() > deadline:
                    raise SystemExit("wait file never came")
                time.sleep(0.02)
        steppe.log_metrics({"loss": float(step + rank), "acc": float(rank)}, step=step)
    steppe.end_run(args.status)
    say(event="ended", run_id=run.info.run_id)
    if args.torch:
        import torch.distributed as dist

        dist.destroy_process_group()


if __name__ == "__main__":
    main()
