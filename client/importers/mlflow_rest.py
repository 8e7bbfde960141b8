"""Reads a running MLflow server through its REST API, every listing paged: experiments,
runs (with params and tags), each metric's full history, artifacts, the registry.

A server offers no bulk read of points, so this costs one paged history call per run and
key (read a database directly when you can: ``mlflow_sql``). Read-only.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
import urllib.request
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

_PAGE = 1000
_HISTORY_PAGE = 25000
_TIMEOUT_S = 120.0


class RestSource:
    """An MLflow tracking server at ``url`` (``MLFLOW_TRACKING_TOKEN`` is sent if set).

    Example::

        source = RestSource("http://127.0.0.1:5000")
    """

    kind = "mlflow"

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.location = self.url
        self._token = token
        self._problems: list[str] = []
        self._runs: list[RunRecord] | None = None
        self._keys: dict[str, list[str]] = {}
        self._observed: dict[tuple[str, str], int] = {}

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = self.url + path
        data = None
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if method == "GET" and body:
            url += "?" + urllib.parse.urlencode(body, doseq=True)
        elif body is not None:
            data = json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            return json.loads(response.read())

    def _pages(self, method: str, path: str, body: dict[str, Any], field: str) -> Iterator[Any]:
        token = None
        while True:
            page = dict(body)
            if token:
                page["page_token"] = token
            answer = self._request(method, path, page)
            yield from answer.get(field, [])
            token = answer.get("next_page_token")
            if not token:
                return

    def experiments(self) -> list[ExperimentRecord]:
        return [
            ExperimentRecord(
                str(e["experiment_id"]),
                e["name"],
                {t["key"]: t.get("value", "") for t in e.get("tags", [])},
                e.get("lifecycle_stage", "active"),
            )
            for e in self._pages(
                "POST",
                "/api/2.0/mlflow/experiments/search",
                {"max_results": _PAGE, "view_type": "ALL"},
                "experiments",
            )
        ]

    def runs(self) -> list[RunRecord]:
        if self._runs is not None:
            return self._runs
        out = []
        ids = [e.source_id for e in self.experiments()]
        for start in range(0, len(ids), 100):
            for raw in self._pages(
                "POST",
                "/api/2.0/mlflow/runs/search",
                {
                    "experiment_ids": ids[start : start + 100],
                    "max_results": _PAGE,
                    "run_view_type": "ALL",
                },
                "runs",
            ):
                info, data = raw["info"], raw.get("data", {})
                run_id = info["run_id"]
                self._keys[run_id] = sorted({m["key"] for m in data.get("metrics", [])})
                out.append(
                    RunRecord(
                        run_id=run_id,
                        experiment_id=str(info["experiment_id"]),
                        run_name=info.get("run_name", ""),
                        status=info.get("status", "RUNNING"),
                        start_time=int(info.get("start_time") or 0),
                        end_time=int(info["end_time"]) if info.get("end_time") else None,
                        lifecycle_stage=info.get("lifecycle_stage", "active"),
                        user_id=info.get("user_id", ""),
                        params={p["key"]: p.get("value", "") for p in data.get("params", [])},
                        tags={t["key"]: t.get("value", "") for t in data.get("tags", [])},
                        fetch_artifacts=self._fetcher(run_id),
                        artifact_uri=info.get("artifact_uri", ""),
                    )
                )
        out.sort(key=lambda r: r.run_id)
        self._runs = out
        return out

    def census(self) -> dict[tuple[str, str], int]:
        """A server has no count of a history short of reading it: the keys of every run,
        counted as they are read (so the report compares steppe with what the server sent)."""
        self.runs()
        return {(run_id, k): 0 for run_id, keys in self._keys.items() for k in keys}

    def observed(self) -> dict[tuple[str, str], int]:
        return dict(self._observed)

    def _history(self, run_id: str, key: str) -> list[tuple[int, int, float]]:
        points = [
            (int(m.get("step", 0)), int(m.get("timestamp", 0)), float(m["value"]))
            for m in self._pages(
                "GET",
                "/api/2.0/mlflow/metrics/get-history",
                {"run_id": run_id, "metric_key": key, "max_results": _HISTORY_PAGE},
                "metrics",
            )
        ]
        # the server's order may vary between pages and reads: ours must not
        points.sort(key=lambda p: (p[0], p[1], repr(p[2])))
        return points

    def points(self, run_ids: set[str]) -> Iterator[Piece]:
        self.runs()
        for run_id in sorted(run_ids & self._keys.keys()):
            for key in self._keys[run_id]:
                history = self._history(run_id, key)
                self._observed[(run_id, key)] = len(history)
                if history:
                    steps, stamps, values = (list(c) for c in zip(*history, strict=True))
                    yield Piece(run_id, [key] * len(steps), steps, stamps, values)

    def _fetcher(self, run_id: str) -> Any:
        def fetch(into: Path) -> None:
            self._download(run_id, "", into)

        return fetch

    def _download(self, run_id: str, path: str, into: Path) -> None:
        body: dict[str, Any] = {"run_id": run_id}
        if path:
            body["path"] = path
        for info in self._pages("GET", "/api/2.0/mlflow/artifacts/list", body, "files"):
            name = info["path"]
            if info.get("is_dir"):
                self._download(run_id, name, into)
                continue
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            query = urllib.parse.urlencode({"run_id": run_id, "path": name})
            request = urllib.request.Request(f"{self.url}/get-artifact?{query}")
            if self._token:
                request.add_header("Authorization", f"Bearer {self._token}")
            with (
                urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response,
                target.open("wb") as f,
            ):
                shutil.copyfileobj(response, f, 1 << 20)

    def registered_models(self) -> list[RegisteredModelRecord]:
        out = []
        for raw in self._pages(
            "GET",
            "/api/2.0/mlflow/registered-models/search",
            {"max_results": _PAGE},
            "registered_models",
        ):
            model = RegisteredModelRecord(
                raw["name"],
                raw.get("description", ""),
                {t["key"]: t.get("value", "") for t in raw.get("tags", [])},
                aliases={a["alias"]: int(a["version"]) for a in raw.get("aliases", [])},
            )
            name = raw["name"].replace("'", "\\'")
            for v in self._pages(
                "GET",
                "/api/2.0/mlflow/model-versions/search",
                {"filter": f"name='{name}'", "max_results": 10_000},
                "model_versions",
            ):
                model.versions.append(
                    VersionRecord(
                        int(v["version"]),
                        v.get("source", ""),
                        v.get("run_id", ""),
                        v.get("description", ""),
                        v.get("current_stage", "None"),
                        {t["key"]: t.get("value", "") for t in v.get("tags", [])},
                    )
                )
            out.append(model)
        return out

    def problems(self) -> list[str]:
        return list(self._problems)
