"""``steppe export``: runs (one, or an experiment's) out of a steppe server, as a folder of
Parquet + JSON (which ``steppe import steppe DIR`` reads back, ids kept) or into an MLflow
server through mlflow's own client (log-batch in chunks). Reads steppe only through its
client; never touches a data dir.

The folder::

    DIR/experiments.json                  [{experiment_id, name, tags, lifecycle_stage}]
    DIR/runs/<run_id>/run.json            info, params, tags
    DIR/runs/<run_id>/metrics.parquet     key, step, timestamp (ms), value: every point
    DIR/runs/<run_id>/artifacts/...       the run's files
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steppe import errors, validation
from steppe.connection import connect
from steppe.entities import Run
from steppe.importers.records import (
    ExperimentRecord,
    Piece,
    RegisteredModelRecord,
    RunRecord,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from steppe.tracking import Client

#: On a run exported to MLflow: the steppe run id, and (once every point is in) the count.
EXPORT_RUN_TAG = "steppe.export.run_id"
EXPORT_DONE_TAG = "steppe.export.points"
_MLFLOW_BATCH_METRICS = 1000
_MLFLOW_BATCH_FIELDS = 100
_PIECE_POINTS = 65536


def select_runs(client: Client, run_id: str | None, experiment: str | None) -> list[Run]:
    """The run named, or every run (deleted ones too) of the experiment (id or name)."""
    if run_id:
        return [client.get_run(validation.check_run_id("run_id", run_id))]
    if experiment is None:
        raise errors.InvalidParameterValue("--run/--experiment", None, "give one of them")
    exp = next(
        (e for e in client.search_experiments() if experiment in (e.experiment_id, e.name)),
        None,
    )
    if exp is None:
        raise errors.ResourceDoesNotExist(f"no experiment with id or name {experiment!r}")
    return client.search_runs([exp.experiment_id], max_results=1_000_000, run_view_type=3)


def _keys(client: Client, run_id: str) -> list[str]:
    table = client.sql(
        f"SELECT DISTINCT key FROM metrics WHERE run_id = '{run_id}' ORDER BY key",
        max_rows=1_000_000,
    )
    keys: list[str] = table.column("key").to_pylist()
    return keys


def history(client: Client, run_id: str, key: str) -> pa.Table:
    """Every point of one series (Arrow: step, value, timestamp), not paged or sampled."""
    import pyarrow as pa

    body = connect(client.tracking_uri).get_bytes(
        "/api/steppe/v1/metric-history", {"run_id": run_id, "key": key, "format": "arrow"}
    )
    table: pa.Table = pa.ipc.open_stream(body).read_all()
    return table


def _run_json(client: Client, run: Run) -> dict[str, Any]:
    info = run.info
    exp = client.get_experiment(info.experiment_id)
    return {
        "info": {
            "run_id": info.run_id,
            "experiment_id": info.experiment_id,
            "experiment_name": exp.name,
            "run_name": info.run_name,
            "status": info.status,
            "start_time": info.start_time,
            "end_time": info.end_time,
            "lifecycle_stage": info.lifecycle_stage,
            "user_id": info.user_id,
        },
        "params": dict(run.data.params),
        "tags": dict(run.data.tags),
    }


def to_folder(client: Client, runs: list[Run], folder: Path, artifacts: bool = True) -> int:
    """Write ``runs`` under ``folder``; the number of points written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("key", pa.string()),
            ("step", pa.int64()),
            ("timestamp", pa.int64()),
            ("value", pa.float64()),
        ]
    )
    folder.mkdir(parents=True, exist_ok=True)
    experiments: dict[str, dict[str, Any]] = {}
    listed = folder / "experiments.json"
    if listed.is_file():  # exporting more runs into the same folder adds to it
        experiments = {e["experiment_id"]: e for e in json.loads(listed.read_text())}
    total = 0
    for run in runs:
        exp = client.get_experiment(run.info.experiment_id)
        experiments[exp.experiment_id] = {
            "experiment_id": exp.experiment_id,
            "name": exp.name,
            "tags": dict(exp.tags),
            "lifecycle_stage": exp.lifecycle_stage,
        }
        target = folder / "runs" / run.info.run_id
        target.mkdir(parents=True, exist_ok=True)
        doc = _run_json(client, run)
        with pq.ParquetWriter(target / "metrics.parquet.part", schema) as writer:
            for key in _keys(client, run.info.run_id):
                table = history(client, run.info.run_id, key)
                keys = pa.array([key] * table.num_rows, pa.string())
                writer.write_table(
                    pa.table(
                        [
                            keys,
                            table.column("step"),
                            table.column("timestamp"),
                            table.column("value"),
                        ],
                        schema=schema,
                    )
                )
                total += table.num_rows
        (target / "metrics.parquet.part").replace(target / "metrics.parquet")
        if artifacts and run.info.lifecycle_stage == "active":
            client.download_artifacts(run.info.run_id, "", target / "artifacts")
        (target / "run.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    (folder / "experiments.json").write_text(
        json.dumps(sorted(experiments.values(), key=lambda e: e["experiment_id"]), indent=2) + "\n"
    )
    return total


class ExportSource:
    """A folder written by ``to_folder``, as an import source (run ids kept)."""

    kind = "steppe"

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.location = str(self.root)
        if not (self.root / "experiments.json").is_file():
            raise errors.InvalidParameterValue(
                "SOURCE",
                str(root),
                "is not a folder written by `steppe export` (no experiments.json)",
            )

    def experiments(self) -> list[ExperimentRecord]:
        raw = json.loads((self.root / "experiments.json").read_text())
        return [
            ExperimentRecord(
                e["experiment_id"], e["name"], e.get("tags", {}), e.get("lifecycle_stage", "active")
            )
            for e in raw
        ]

    def _run_dirs(self) -> list[Path]:
        runs = self.root / "runs"
        return (
            sorted(d for d in runs.iterdir() if (d / "run.json").is_file()) if runs.is_dir() else []
        )

    def runs(self) -> list[RunRecord]:
        out = []
        for d in self._run_dirs():
            doc = json.loads((d / "run.json").read_text())
            info = doc["info"]
            out.append(
                RunRecord(
                    run_id=info["run_id"],
                    experiment_id=info["experiment_id"],
                    run_name=info.get("run_name", ""),
                    status=info.get("status", "FINISHED"),
                    start_time=int(info.get("start_time") or 0),
                    end_time=info.get("end_time"),
                    lifecycle_stage=info.get("lifecycle_stage", "active"),
                    user_id=info.get("user_id", ""),
                    params=doc.get("params", {}),
                    tags={
                        k: v
                        for k, v in doc.get("tags", {}).items()
                        if not k.startswith("steppe.import.")
                    },
                    artifact_dir=d / "artifacts",
                )
            )
        return out

    def census(self) -> dict[tuple[str, str], int]:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        counts: dict[tuple[str, str], int] = {}
        for d in self._run_dirs():
            if not (d / "metrics.parquet").is_file():
                continue
            keys = pq.read_table(d / "metrics.parquet", columns=["key"]).column("key")
            for row in pc.value_counts(keys).to_pylist():
                counts[(d.name, row["values"])] = int(row["counts"])
        return counts

    def points(self, run_ids: set[str]) -> Iterator[Piece]:
        import pyarrow.parquet as pq

        for d in self._run_dirs():
            if d.name not in run_ids or not (d / "metrics.parquet").is_file():
                continue
            for batch in pq.ParquetFile(d / "metrics.parquet").iter_batches(_PIECE_POINTS):
                yield Piece(
                    d.name,
                    batch.column("key").to_pylist(),
                    batch.column("step").to_pylist(),
                    batch.column("timestamp").to_pylist(),
                    batch.column("value").to_pylist(),
                )

    def registered_models(self) -> list[RegisteredModelRecord]:
        return []

    def problems(self) -> list[str]:
        return []


def to_mlflow(
    client: Client, runs: list[Run], tracking_uri: str, artifacts: bool = True
) -> dict[str, Any]:
    """Copy ``runs`` into the MLflow tracking server (or store) at ``tracking_uri`` with
    mlflow's client. Idempotent: a run exported before and complete is skipped; one left
    incomplete is deleted there and exported again. Returns steppe id -> MLflow id and
    what was done."""
    import tempfile

    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    target = MlflowClient(tracking_uri)
    mapping: dict[str, str] = {}
    skipped: list[str] = []
    points = 0
    for run in runs:
        doc = _run_json(client, run)
        info = doc["info"]
        exp = target.get_experiment_by_name(info["experiment_name"])
        exp_id = (
            exp.experiment_id
            if exp is not None
            else target.create_experiment(info["experiment_name"])
        )
        found = target.search_runs(
            [exp_id], f"tags.`{EXPORT_RUN_TAG}` = '{info['run_id']}'", run_view_type=3
        )
        done = [r for r in found if EXPORT_DONE_TAG in r.data.tags]
        if done:
            mapping[info["run_id"]] = done[0].info.run_id
            skipped.append(info["run_id"])
            continue
        for stale in found:  # an earlier attempt broke off: MLflow cannot drop resends
            target.delete_run(stale.info.run_id)
        created = target.create_run(
            exp_id,
            start_time=info["start_time"],
            tags={EXPORT_RUN_TAG: info["run_id"]},
            run_name=info["run_name"] or None,
        )
        mlflow_id = created.info.run_id
        params = [Param(k, v) for k, v in sorted(doc["params"].items())]
        tags = [
            RunTag(k, v)
            for k, v in sorted(doc["tags"].items())
            if not k.startswith(("steppe.import.", "mlflow.runName"))
        ]
        for start in range(0, len(params), _MLFLOW_BATCH_FIELDS):
            target.log_batch(mlflow_id, params=params[start : start + _MLFLOW_BATCH_FIELDS])
        for start in range(0, len(tags), _MLFLOW_BATCH_FIELDS):
            target.log_batch(mlflow_id, tags=tags[start : start + _MLFLOW_BATCH_FIELDS])
        count = 0
        for key in _keys(client, info["run_id"]):
            table = history(client, info["run_id"], key)
            steps = table.column("step").to_pylist()
            stamps = table.column("timestamp").to_pylist()
            values = table.column("value").to_pylist()
            for start in range(0, len(steps), _MLFLOW_BATCH_METRICS):
                end = start + _MLFLOW_BATCH_METRICS
                target.log_batch(
                    mlflow_id,
                    metrics=[
                        Metric(key, v, t, s)
                        for s, t, v in zip(
                            steps[start:end], stamps[start:end], values[start:end], strict=True
                        )
                    ],
                )
            count += len(steps)
        if artifacts and info["lifecycle_stage"] == "active":
            with tempfile.TemporaryDirectory(prefix="steppe-export-") as tmp:
                local = Path(client.download_artifacts(info["run_id"], "", tmp))
                if any(p.is_file() for p in local.rglob("*")):
                    target.log_artifacts(mlflow_id, str(local))
        target.set_tag(mlflow_id, EXPORT_DONE_TAG, str(count))
        if info["status"] != "RUNNING":
            target.set_terminated(mlflow_id, info["status"], end_time=info["end_time"])
        if info["lifecycle_stage"] == "deleted":
            target.delete_run(mlflow_id)
        mapping[info["run_id"]] = mlflow_id
        points += count
    return {"runs": mapping, "complete_before": skipped, "points_sent": points}


def main(args: Any) -> int:
    """``steppe export``: exit 0, or 2 with the reason on stderr."""
    from steppe.tracking import Client

    client = Client(args.tracking_uri)
    try:
        runs = select_runs(client, args.run, args.experiment)
        if args.to_mlflow:
            done = to_mlflow(client, runs, args.to_mlflow, artifacts=not args.no_artifacts)
            print(
                f"steppe export: {len(runs)} run(s) in {args.to_mlflow} "
                f"({len(done['complete_before'])} complete before), "
                f"{done['points_sent']:,} points sent",
                file=sys.stderr,
            )
            print(json.dumps(done["runs"], indent=2))
        else:
            points = to_folder(client, runs, args.output, artifacts=not args.no_artifacts)
            print(
                f"steppe export: {len(runs)} run(s), {points:,} points in {args.output}",
                file=sys.stderr,
            )
    except (errors.SteppeError, OSError) as exc:
        print(f"steppe export: {exc}", file=sys.stderr)
        return 2
    return 0
