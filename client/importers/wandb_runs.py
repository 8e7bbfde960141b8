"""Reads Weights & Biases runs from disk: offline (or synced) run folders, whose
``run-<id>.wandb`` transaction log holds the run, its config and every history row
(``wandb_wire`` decodes it), and history files exported from W&B (``.jsonl``, one JSON
object per row as W&B's ``wandb-history.jsonl``, or ``.csv`` with a header row): numeric
history values become metric points at their ``_step`` and ``_timestamp``, the config the
params. Media, tables and histograms are counted in the report, not imported.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

from steppe import validation
from steppe.errors import InvalidParameterValue
from steppe.importers import wandb_wire
from steppe.importers.records import (
    ExperimentRecord,
    Piece,
    RegisteredModelRecord,
    RunRecord,
)

_PIECE_POINTS = 65536
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")
_STATUS = {0: "FINISHED"}


def _ms(seconds: float | None, default: int) -> int:
    if seconds is None or not math.isfinite(seconds):
        return default
    return max(0, round(seconds * 1000))


class WandbSource:
    """W&B offline run folders and exported history files below ``root`` (or one file).

    Example::

        source = WandbSource(Path("wandb"))
    """

    kind = "wandb"

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.location = str(self.root)
        self._problems: list[str] = []
        self._runs: dict[str, RunRecord] = {}
        self._files: dict[str, Path] = {}
        self._census: dict[tuple[str, str], int] = {}
        self._renamed: dict[str, str] = {}
        self._experiments: dict[str, str] = {}

    def _key(self, name: str) -> str:
        key = self._renamed.get(name)
        if key is None:
            key = _BAD_KEY_CHARS.sub("_", name).strip("/").replace("..", "__")[:250] or "_"
            self._renamed[name] = key
            if key != name:
                self._problems.append(f"key {name!r} imported as {key!r}")
        return key

    def _scan(self) -> None:
        if self._runs:
            return
        if self.root.is_file():
            candidates = [self.root]
        else:
            candidates = sorted(
                p
                for p in self.root.rglob("*")
                if p.is_file() and (p.suffix == ".wandb" or p.suffix in (".jsonl", ".csv"))
            )
        for path in candidates:
            if path.suffix == ".wandb":
                self._read_log(path)
            elif path.name != "requirements.txt":
                self._read_history_file(path)

    # --- transaction logs ------------------------------------------------------------------

    def _rows(self, path: Path) -> Iterator[wandb_wire.Row]:
        run = wandb_wire.Run()
        with path.open("rb") as f:
            for record in wandb_wire.records(f):
                if isinstance(record, wandb_wire.Broken):
                    self._problems.append(f"{path}: byte {record.offset}: {record.reason}")
                    continue
                try:
                    row = wandb_wire.decode(record, run)
                except Exception as exc:  # a record that frames right but will not parse
                    self._problems.append(f"{path}: undecodable record ({exc})")
                    continue
                if row is not None:
                    yield row

    def _read_log(self, path: Path) -> None:
        run = wandb_wire.Run()
        counts: dict[str, int] = {}
        last_ms = 0
        skipped = 0
        with path.open("rb") as f:
            for record in wandb_wire.records(f):
                if isinstance(record, bytes):
                    try:
                        row = wandb_wire.decode(record, run)
                    except Exception:  # reported by _rows when the points are read
                        continue
                    if row is not None:
                        skipped += row.skipped
                        last_ms = max(last_ms, _ms(row.timestamp_s, 0))
                        for name in row.values:
                            key = self._key(name)
                            counts[key] = counts.get(key, 0) + 1
        run_id = run.run_id or path.stem.removeprefix("run-")
        try:
            validation.check_run_id("run_id", run_id)
        except InvalidParameterValue:
            run_id = hashlib.sha256(f"wandb\0{path}".encode()).hexdigest()[:32]
        if run_id in self._runs:
            self._problems.append(f"{path}: run {run_id} seen before in this folder; skipped")
            return
        tags = {"wandb.run_id": run.run_id or run_id}
        if run.tags:
            tags["wandb.tags"] = ",".join(run.tags)
        if run.notes:
            tags["mlflow.note.content"] = run.notes
        if run.group:
            tags["wandb.group"] = run.group
        if run.job_type:
            tags["wandb.job_type"] = run.job_type
        if run.exit_code is None:
            self._problems.append(
                f"run {run_id}: no exit record (the process died or is still running); "
                "imported as KILLED"
            )
        project = run.project or "wandb"
        self._experiments[project] = project
        self._runs[run_id] = RunRecord(
            run_id=run_id,
            experiment_id=project,
            run_name=run.name or run_id,
            status=_STATUS.get(run.exit_code, "FAILED") if run.exit_code is not None else "KILLED",
            start_time=run.start_ms,
            end_time=max(last_ms, run.start_ms) or None,
            params=wandb_wire.flat_params(run.config),
            tags=tags,
            artifact_dir=None,
        )
        self._files[run_id] = path
        for key, n in counts.items():
            self._census[(run_id, key)] = n
        if skipped:
            self._problems.append(
                f"run {run_id}: {skipped} non-numeric history values (media, tables, "
                "histograms, text) not imported"
            )

    # --- exported history files ------------------------------------------------------------

    def _history_rows(self, path: Path) -> Iterator[tuple[int, float | None, dict[str, float]]]:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                for number, line in enumerate(f):
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    yield _history_row(row, number)
        else:
            with path.open(newline="", encoding="utf-8") as f:
                for number, raw in enumerate(csv.DictReader(f)):
                    row = {}
                    for k, v in raw.items():
                        if k is None or v is None or v == "":
                            continue
                        try:
                            row[k] = float(v)
                        except ValueError:
                            continue
                    yield _history_row(row, number)

    def _read_history_file(self, path: Path) -> None:
        counts: dict[str, int] = {}
        last_ms = 0
        first_ms: int | None = None
        try:
            for _, stamp, values in self._history_rows(path):
                ms = _ms(stamp, 0)
                last_ms = max(last_ms, ms)
                first_ms = ms if first_ms is None or (ms and ms < first_ms) else first_ms
                for name in values:
                    key = self._key(name)
                    counts[key] = counts.get(key, 0) + 1
        except (ValueError, UnicodeDecodeError) as exc:
            self._problems.append(f"{path}: not a W&B history file ({exc})")
            return
        if not counts:
            return
        run_id = hashlib.sha256(f"wandb-history\0{path}".encode()).hexdigest()[:32]
        experiment = path.parent.name or "wandb"
        self._experiments[experiment] = experiment
        self._runs[run_id] = RunRecord(
            run_id=run_id,
            experiment_id=experiment,
            run_name=path.stem,
            status="FINISHED",
            start_time=first_ms or 0,
            end_time=last_ms or None,
            tags={"wandb.history_file": path.name},
        )
        self._files[run_id] = path
        for key, n in counts.items():
            self._census[(run_id, key)] = n

    # --- the Source protocol ---------------------------------------------------------------

    def experiments(self) -> list[ExperimentRecord]:
        self._scan()
        return [ExperimentRecord(e, e) for e in sorted(self._experiments)]

    def runs(self) -> list[RunRecord]:
        self._scan()
        return sorted(self._runs.values(), key=lambda r: r.run_id)

    def census(self) -> dict[tuple[str, str], int]:
        self._scan()
        return dict(self._census)

    def points(self, run_ids: set[str]) -> Iterator[Piece]:
        self._scan()
        for run_id in sorted(run_ids & self._files.keys()):
            path = self._files[run_id]
            start = self._runs[run_id].start_time
            keys: list[str] = []
            steps: list[int] = []
            stamps: list[int] = []
            values: list[float] = []
            rows = (
                ((r.step, r.timestamp_s, r.values) for r in self._rows(path))
                if path.suffix == ".wandb"
                else self._history_rows(path)
            )
            for step, stamp, row in rows:
                ms = _ms(stamp, start)
                for name, value in row.items():
                    keys.append(self._key(name))
                    steps.append(step)
                    stamps.append(ms)
                    values.append(value)
                if len(keys) >= _PIECE_POINTS:
                    yield Piece(run_id, keys, steps, stamps, values)
                    keys, steps, stamps, values = [], [], [], []
            if keys:
                yield Piece(run_id, keys, steps, stamps, values)

    def registered_models(self) -> list[RegisteredModelRecord]:
        return []

    def problems(self) -> list[str]:
        return list(self._problems)


def _history_row(row: dict[str, object], number: int) -> tuple[int, float | None, dict[str, float]]:
    step = row.get("_step", row.get("step", number))
    stamp = row.get("_timestamp")
    values = {
        k: float(v)
        for k, v in row.items()
        if not k.startswith("_")
        and k != "step"
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
    }
    return (
        int(step) if isinstance(step, (int, float)) else number,
        float(stamp) if isinstance(stamp, (int, float)) else None,
        values,
    )
