"""Reads an MLflow file store (``mlruns/``) as it lies on disk: meta.yaml files, one file
per param and tag, one line per metric point (``timestamp value step``), the registry
under ``models/``. Read-only; mlflow itself is not needed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from steppe.importers.records import (
    ExperimentRecord,
    Piece,
    RegisteredModelRecord,
    RunRecord,
    VersionRecord,
)

#: MLflow's RunStatus numbers, as its file store writes them.
STATUS_BY_NUMBER = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}
_NOT_RUNS = {"tags", "models", "datasets", "traces", "outputs", "inputs"}
_PIECE_POINTS = 65536


def _yaml(path: Path) -> dict[str, Any]:
    import yaml  # type: ignore[import-untyped,unused-ignore]  # PyYAML, steppe[import]

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open("rb") as f:
        data = yaml.load(f, Loader=loader)
    return data if isinstance(data, dict) else {}


def _read_tree(folder: Path) -> dict[str, str]:
    """A params/ or tags/ folder: one file per key (keys with '/' are nested folders)."""
    if not folder.is_dir():
        return {}
    return {
        p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8")
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def local_path(uri: str, base: Path) -> Path | None:
    """The folder an artifact URI names on this machine (None for s3:// and the like)."""
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(uri).path))
    if uri.startswith("file:"):
        return Path(uri[len("file:") :])
    if "://" in uri or uri.startswith("mlflow-artifacts:"):
        return None
    path = Path(uri)
    return path if path.is_absolute() else base / path


class FileStoreSource:
    """An ``mlruns/`` folder.

    Example::

        source = FileStoreSource(Path("mlruns"))
        runs = source.runs()
    """

    kind = "mlflow"

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.location = str(self.root)
        self._problems: list[str] = []
        self._run_dirs: dict[str, Path] = {}

    def _experiment_dirs(self) -> list[Path]:
        found = []
        for parent in (self.root, self.root / ".trash"):
            if not parent.is_dir():
                continue
            for d in sorted(parent.iterdir()):
                if d.name not in (".trash", "models") and (d / "meta.yaml").is_file():
                    found.append(d)
        return found

    def experiments(self) -> list[ExperimentRecord]:
        out = []
        for d in self._experiment_dirs():
            meta = _yaml(d / "meta.yaml")
            out.append(
                ExperimentRecord(
                    source_id=str(meta.get("experiment_id", d.name)),
                    name=str(meta.get("name", d.name)),
                    tags=_read_tree(d / "tags"),
                    lifecycle_stage=str(meta.get("lifecycle_stage") or "active"),
                )
            )
        return out

    def runs(self) -> list[RunRecord]:
        out = []
        for exp_dir in self._experiment_dirs():
            for d in sorted(exp_dir.iterdir()):
                if d.name in _NOT_RUNS or not (d / "meta.yaml").is_file():
                    continue
                try:
                    meta = _yaml(d / "meta.yaml")
                except Exception as exc:  # a broken meta.yaml: report the run, read the rest
                    self._problems.append(f"run folder {d}: unreadable meta.yaml ({exc})")
                    continue
                run_id = str(meta.get("run_id") or meta.get("run_uuid") or d.name)
                status = meta.get("status", 1)
                artifact_uri = str(meta.get("artifact_uri") or "")
                folder = local_path(artifact_uri, self.root) if artifact_uri else d / "artifacts"
                self._run_dirs[run_id] = d
                out.append(
                    RunRecord(
                        run_id=run_id,
                        experiment_id=str(meta.get("experiment_id", exp_dir.name)),
                        run_name=str(meta.get("run_name") or ""),
                        status=STATUS_BY_NUMBER.get(status, str(status))
                        if isinstance(status, int)
                        else str(status),
                        start_time=int(meta.get("start_time") or 0),
                        end_time=int(meta["end_time"]) if meta.get("end_time") else None,
                        lifecycle_stage=str(meta.get("lifecycle_stage") or "active"),
                        user_id=str(meta.get("user_id") or ""),
                        params=_read_tree(d / "params"),
                        tags=_read_tree(d / "tags"),
                        artifact_dir=folder,
                        artifact_uri=artifact_uri,
                    )
                )
        return out

    def _metric_files(self, run_id: str) -> list[tuple[str, Path]]:
        folder = self._run_dirs[run_id] / "metrics"
        if not folder.is_dir():
            return []
        return sorted(
            (p.relative_to(folder).as_posix(), p) for p in folder.rglob("*") if p.is_file()
        )

    def census(self) -> dict[tuple[str, str], int]:
        if not self._run_dirs:
            self.runs()
        counts = {}
        for run_id in self._run_dirs:
            for key, path in self._metric_files(run_id):
                with path.open("rb") as f:
                    counts[(run_id, key)] = sum(1 for line in f if line.strip())
        return counts

    def points(self, run_ids: set[str]) -> Iterator[Piece]:
        if not self._run_dirs:
            self.runs()
        for run_id in sorted(run_ids & self._run_dirs.keys()):
            for key, path in self._metric_files(run_id):
                yield from self._read_metric(run_id, key, path)

    def _read_metric(self, run_id: str, key: str, path: Path) -> Iterator[Piece]:
        steps: list[int] = []
        stamps: list[int] = []
        values: list[float] = []
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                try:
                    stamps.append(int(parts[0]))
                    values.append(float(parts[1]))
                    steps.append(int(parts[2]) if len(parts) > 2 else 0)
                except (ValueError, IndexError):
                    del stamps[len(steps) :], values[len(steps) :]
                    self._problems.append(f"{path}:{number}: not a metric line: {line[:80]!r}")
                    continue
                if len(values) >= _PIECE_POINTS:
                    yield Piece(run_id, [key] * len(values), steps, stamps, values)
                    steps, stamps, values = [], [], []
        if values:
            yield Piece(run_id, [key] * len(values), steps, stamps, values)

    def registered_models(self) -> list[RegisteredModelRecord]:
        models_dir = self.root / "models"
        out: list[RegisteredModelRecord] = []
        if not models_dir.is_dir():
            return out
        for d in sorted(models_dir.iterdir()):
            if not (d / "meta.yaml").is_file():
                continue
            meta = _yaml(d / "meta.yaml")
            model = RegisteredModelRecord(
                name=str(meta.get("name", d.name)),
                description=str(meta.get("description") or ""),
                tags=_read_tree(d / "tags"),
            )
            aliases = dict(_read_tree(d / "aliases"))
            aliases.update({str(k): str(v) for k, v in (meta.get("aliases") or {}).items()})
            model.aliases = {k: int(v) for k, v in aliases.items()}
            for v in sorted(d.glob("version-*")):
                vmeta = _yaml(v / "meta.yaml") if (v / "meta.yaml").is_file() else {}
                if not vmeta:
                    continue
                model.versions.append(
                    VersionRecord(
                        version=int(vmeta.get("version", v.name.split("-", 1)[1])),
                        source=str(vmeta.get("source") or ""),
                        run_id=str(vmeta.get("run_id") or ""),
                        description=str(vmeta.get("description") or ""),
                        stage=str(vmeta.get("current_stage") or "None"),
                        tags=_read_tree(v / "tags"),
                    )
                )
            out.append(model)
        return out

    def problems(self) -> list[str]:
        return list(self._problems)


def nan_if(value: float, is_nan: object) -> float:
    """MLflow's SQL store keeps NaN as value 0 with is_nan set."""
    return math.nan if is_nan else value
