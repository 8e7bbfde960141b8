"""``steppe import KIND SOURCE`` and ``steppe export``: argument parsing and exit codes.
The readers and writers load only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from steppe import errors


def add_parsers(sub: Any) -> None:
    """The ``import`` and ``export`` subcommands on the CLI's subparsers."""
    parser = sub.add_parser(
        "import",
        help="import runs from MLflow (mlruns/, a database, a server) or TensorBoard logs",
        description="Stream another tracker's history into the steppe server at "
        "--tracking-uri (default: $STEPPE_TRACKING_URI, else the local data dir's server): "
        "experiments, runs (MLflow run ids kept), params, tags, every metric point, "
        "artifacts, registered models. Safe to repeat and to interrupt: a re-run sends "
        "nothing twice and finishes what an interrupted one left. Ends with a fidelity "
        "report (exit status 1 if steppe and the source differ).",
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    mlflow = kinds.add_parser(
        "mlflow",
        help="an MLflow file store, database URI or server URL",
        description="SOURCE: an mlruns/ folder, a SQLAlchemy URI (sqlite:///mlflow.db, "
        "postgresql://user@host/db) read in bulk, or an MLflow server's http(s):// URL "
        "(MLFLOW_TRACKING_TOKEN is sent if set).",
    )
    mlflow.add_argument("source", metavar="SOURCE")
    tensorboard = kinds.add_parser(
        "tensorboard",
        help="a TensorBoard log dir (one run per folder of event files)",
        description="LOGDIR: every folder below it holding events.out.tfevents.* files "
        "becomes a run (scalars, hparams as params, wall time as timestamps).",
    )
    tensorboard.add_argument("source", metavar="LOGDIR")
    tensorboard.add_argument(
        "--experiment", default=None, help="experiment name (default: the log dir's name)"
    )
    wandb = kinds.add_parser(
        "wandb",
        help="W&B run folders (run-*.wandb transaction logs) and exported history files",
        description="PATH: a folder searched for W&B run folders (offline-run-*/run-*.wandb:"
        " config as params, every numeric history value as a point) and history files "
        "exported from W&B (.jsonl rows or .csv with _step/_timestamp columns), or one file.",
    )
    wandb.add_argument("source", metavar="PATH")
    neptune = kinds.add_parser(
        "neptune",
        help="neptune-exporter's Parquet output (its --data-path folder)",
        description="PATH: the folder neptune-exporter wrote (<project>/<run>_part_<n>.parquet):"
        " float series as metrics, single values as params, sys/tags as tags.",
    )
    neptune.add_argument("source", metavar="PATH")
    exported = kinds.add_parser(
        "steppe",
        help="a folder written by `steppe export` (run ids kept)",
        description="SOURCE: a folder written by `steppe export --output`.",
    )
    exported.add_argument("source", metavar="SOURCE")
    for p in (mlflow, tensorboard, wandb, neptune, exported):
        p.add_argument("--tracking-uri", default=None, metavar="URI", help="the steppe server")
        p.add_argument(
            "--report",
            type=Path,
            default=None,
            metavar="FILE",
            help="also write the fidelity report as JSON to FILE",
        )
        p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
        p.add_argument("--no-artifacts", action="store_true", help="do not copy artifacts")

    export = sub.add_parser(
        "export",
        help="export a run or an experiment as Parquet + JSON, or into an MLflow server",
        description="Copy a run (--run) or every run of an experiment (--experiment, id or "
        "name) out of the steppe server at --tracking-uri: into a folder (--output: "
        "run.json, metrics.parquet with every point, artifacts; `steppe import steppe` "
        "reads it back) or into an MLflow tracking server or store (--to-mlflow URI, with "
        "mlflow's client; safe to repeat).",
    )
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", default=None, metavar="RUN_ID")
    which.add_argument("--experiment", default=None, metavar="ID_OR_NAME")
    where = export.add_mutually_exclusive_group(required=True)
    where.add_argument("--output", type=Path, default=None, metavar="DIR")
    where.add_argument("--to-mlflow", default=None, metavar="URI")
    export.add_argument("--tracking-uri", default=None, metavar="URI", help="the steppe server")
    export.add_argument("--no-artifacts", action="store_true", help="do not copy artifacts")


def main(args: argparse.Namespace) -> int:
    from steppe.importers import fidelity, sources
    from steppe.tracking import Client

    try:
        source = sources.open_source(args.kind, args.source)
        if getattr(args, "experiment", None):
            source.experiment_name = args.experiment  # type: ignore[attr-defined]
        report = sources.run(
            Client(args.tracking_uri),
            source,
            progress=not args.no_progress,
            artifacts=not args.no_artifacts,
        )
    except (errors.SteppeError, OSError) as exc:
        print(f"steppe import: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "steppe import: interrupted; run the same command again to finish "
            "(nothing is imported twice)",
            file=sys.stderr,
        )
        return 130
    print(fidelity.summary(report), file=sys.stderr)
    if args.report is not None:
        fidelity.write(report, args.report)
    return 0 if report["ok"] else 1
