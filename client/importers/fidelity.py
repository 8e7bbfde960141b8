"""The fidelity report of an import: runs, params, tags and points per key as the source
has them, beside what the steppe server holds, and every difference by name. Reads both
sides; writes nothing but the report.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steppe.importers.records import IMPORT_TAG_PREFIX, RegisteredModelRecord, RunRecord
from steppe.importers.target import Outcome, _chunks, _sql_list

if TYPE_CHECKING:
    from steppe.tracking import Client

#: Differences listed one by one; past this many the report says how many more there are.
MAX_LISTED = 1000


def _steppe_side(
    client: Client, run_ids: Sequence[str]
) -> tuple[
    set[str], dict[tuple[str, str], int], dict[str, dict[str, str]], dict[str, dict[str, str]]
]:
    runs: set[str] = set()
    points: dict[tuple[str, str], int] = {}
    params: dict[str, dict[str, str]] = {}
    tags: dict[str, dict[str, str]] = {}
    for part in _chunks(list(run_ids), 1000):
        ids = _sql_list(part)
        t = client.sql(f"SELECT run_id FROM runs WHERE run_id IN ({ids})", max_rows=1_000_000)
        runs.update(t.column("run_id").to_pylist())
        t = client.sql(
            f"SELECT run_id, key, count(*) AS n FROM metrics WHERE run_id IN ({ids}) "
            "GROUP BY run_id, key",
            max_rows=1_000_000,
        )
        for run_id, key, n in zip(
            *(t.column(c).to_pylist() for c in ("run_id", "key", "n")), strict=True
        ):
            points[(run_id, key)] = int(n)
        for view, into in (("params", params), ("tags", tags)):
            t = client.sql(
                f"SELECT run_id, key, value FROM {view} WHERE run_id IN ({ids})",
                max_rows=1_000_000,
            )
            for run_id, key, value in zip(
                *(t.column(c).to_pylist() for c in ("run_id", "key", "value")), strict=True
            ):
                into.setdefault(run_id, {})[key] = value
    return runs, points, params, tags


def _compare(
    what: str, run_id: str, source: Mapping[str, str], steppe: Mapping[str, str], out: list[str]
) -> int:
    same = 0
    for key, value in source.items():
        if key.startswith(IMPORT_TAG_PREFIX):
            continue
        if key not in steppe:
            out.append(f"run {run_id}: {what} {key!r} missing in steppe")
        elif steppe[key] != value:
            out.append(
                f"run {run_id}: {what} {key!r} is {steppe[key][:80]!r} in steppe, "
                f"{value[:80]!r} in the source"
            )
        else:
            same += 1
    return same


def build(
    client: Client,
    location: str,
    runs: Sequence[RunRecord],
    census: Mapping[tuple[str, str], int],
    outcome: Outcome,
    models: Sequence[RegisteredModelRecord] = (),
    elapsed_s: float = 0.0,
    unread: set[str] | frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Compare the source's runs (``runs``, ``census``) with what steppe holds now; the
    points of ``unread`` runs (complete before, on a source that cannot count them without
    sending them all again) are not compared."""
    differences = list(outcome.differences)
    if unread:
        differences.append(
            f"points of {len(unread)} run(s) complete before were not re-read from the "
            "server (not compared)"
        )
    found: list[str] = []
    in_steppe, points, params, tags = _steppe_side(client, [r.run_id for r in runs])
    same_params = same_tags = 0
    by_run: dict[str, dict[str, int]] = {}
    for (run_id, key), n in census.items():
        by_run.setdefault(run_id, {})[key] = n
    same_keys = 0
    for run in runs:
        if run.run_id not in in_steppe:
            found.append(f"run {run.run_id}: missing in steppe")
            continue
        same_params += _compare("param", run.run_id, run.params, params.get(run.run_id, {}), found)
        same_tags += _compare("tag", run.run_id, run.tags, tags.get(run.run_id, {}), found)
        for key, n in sorted(by_run.get(run.run_id, {}).items()):
            got = points.get((run.run_id, key), 0)
            if got != n:
                found.append(
                    f"run {run.run_id}: metric {key!r} has {got} points in steppe, "
                    f"{n} in the source"
                )
            else:
                same_keys += 1
        if run.run_id in unread:
            continue
        extra = {k for (r, k) in points if r == run.run_id} - by_run.get(run.run_id, {}).keys()
        for key in sorted(extra):
            found.append(f"run {run.run_id}: metric {key!r} is in steppe, not in the source")
    differences += found
    source_points = sum(census.values())
    run_ids = {r.run_id for r in runs}
    report: dict[str, Any] = {
        "source": location,
        "ok": not found,
        "runs": {
            "source": len(runs),
            "in_steppe": len(in_steppe),
            "imported_now": len(outcome.imported_runs),
            "complete_before": len(outcome.skipped_runs),
        },
        "params": {"source": sum(len(r.params) for r in runs), "matching": same_params},
        "tags": {
            "source": sum(1 for r in runs for k in r.tags if not k.startswith(IMPORT_TAG_PREFIX)),
            "matching": same_tags,
        },
        "metric_keys": {"source": len(census), "matching": same_keys},
        "points": {
            "source": source_points,
            "in_steppe": sum(n for (r, _), n in points.items() if r in run_ids),
            "sent_now": outcome.points_sent,
        },
        "models": {
            "source": len(models),
            "versions_source": sum(len(m.versions) for m in models),
            "versions_in_steppe": sum(len(v) for v in outcome.models.values()),
        },
        "experiments": outcome.experiments,
        "elapsed_s": round(elapsed_s, 3),
        "points_per_s": round(outcome.points_sent / elapsed_s) if elapsed_s > 0 else None,
        "differences": differences[:MAX_LISTED],
        "differences_not_listed": max(0, len(differences) - MAX_LISTED),
    }
    return report


def summary(report: Mapping[str, Any]) -> str:
    """The report as a few lines for the terminal."""
    r, p, pts = report["runs"], report["params"], report["points"]
    lines = [
        f"imported from {report['source']}: "
        f"{r['in_steppe']:,}/{r['source']:,} runs in steppe ({r['imported_now']:,} now, "
        f"{r['complete_before']:,} complete before), "
        f"params {p['matching']:,}/{p['source']:,}, tags {report['tags']['matching']:,}/"
        f"{report['tags']['source']:,}, metric keys {report['metric_keys']['matching']:,}/"
        f"{report['metric_keys']['source']:,}, points {pts['in_steppe']:,}/{pts['source']:,}"
        f" (sent now {pts['sent_now']:,}"
        + (f", {report['points_per_s']:,} points/s" if report.get("points_per_s") else "")
        + ")",
    ]
    m = report["models"]
    if m["source"]:
        lines.append(
            f"registry: {m['source']} models, versions {m['versions_in_steppe']}/"
            f"{m['versions_source']}"
        )
    diffs = report["differences"]
    if diffs:
        lines.append(f"{len(diffs) + report['differences_not_listed']:,} difference(s):")
        lines += [f"  - {d}" for d in diffs[:20]]
        if len(diffs) > 20:
            more = len(diffs) - 20 + report["differences_not_listed"]
            lines.append(f"  ... {more:,} more (--report FILE lists them)")
    else:
        lines.append("no differences")
    return "\n".join(lines)


def write(report: Mapping[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
