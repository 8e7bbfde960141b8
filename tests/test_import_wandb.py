"""`steppe import wandb`: run folders written by the real wandb in offline mode (no
network) and a history file in W&B's export shape arrive with their config as params and
every numeric history value as a point; a damaged record is found by its CRC."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import steppe
from steppe.importers import sources, wandb_wire
from steppe.importers.wandb_runs import WandbSource
from tests.conftest import ServerProcess, clean_env
from tests.importing import steppe_import

pytest.importorskip("wandb")

WRITER = r"""
import sys, wandb
project = sys.argv[1]
for name, failing in (("first", False), ("second", True)):
    run = wandb.init(project=project, dir=".", name=name, tags=["gpu", "v2"], notes="a note",
                     config={"lr": 0.01, "opt": "adam", "net": {"depth": 4}, "amp": True})
    for step in range(120):
        wandb.log({"loss": 1 / (step + 1), "eval": {"acc": step / 120}}, step=step)
    wandb.log({"odd": float("nan"), "hist": wandb.Histogram([1, 2, 3])}, step=120)
    run.finish(exit_code=1 if failing else 0)
    print(run.id)
"""


def _write_runs(folder: Path, project: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", WRITER, project],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=180,
        env=clean_env(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DISABLE_GIT="true"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


def test_wandb_offline_runs_round_trip(steppe_server: ServerProcess, tmp_path: Path) -> None:
    project = f"wb-{uuid.uuid4().hex[:8]}"
    ids = _write_runs(tmp_path / "work", project)
    assert len(ids) == 2 and all((tmp_path / "work").rglob(f"run-{i}.wandb") for i in ids)
    report_file = tmp_path / "report.json"
    done = steppe_import(
        "wandb", str(tmp_path / "work"), "--report", str(report_file), uri=steppe_server.http_url
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert report["ok"], report["differences"]
    assert report["points"]["source"] == report["points"]["in_steppe"] == 2 * (240 + 1)
    client = steppe.Client(steppe_server.http_url)
    first, second = (client.get_run(i) for i in ids)
    assert first.info.run_name == "first" and first.info.status == "FINISHED"
    assert second.info.status == "FAILED"
    assert client.get_experiment(first.info.experiment_id).name == project
    assert first.data.params == {"lr": "0.01", "opt": "adam", "net.depth": "4", "amp": "True"}
    assert first.data.tags["wandb.tags"] == "gpu,v2"
    assert first.data.tags["mlflow.note.content"] == "a note"
    loss = client.get_metric_history(ids[0], "loss")
    assert sorted((m.step, m.value) for m in loss) == [(s, 1 / (s + 1)) for s in range(120)]
    acc = client.get_metric_history(ids[0], "eval.acc")
    assert sorted((m.step, m.value) for m in acc) == [(s, s / 120) for s in range(120)]
    assert all(first.info.start_time <= m.timestamp <= first.info.end_time for m in loss)
    (odd,) = client.get_metric_history(ids[0], "odd")
    assert odd.step == 120 and odd.value != odd.value  # NaN kept
    assert "non-numeric history values" in "\n".join(report["differences"])  # the histogram

    again = steppe_import(
        "wandb", str(tmp_path / "work"), "--report", str(report_file), uri=steppe_server.http_url
    )
    assert again.returncode == 0, again.stderr[-3000:]
    second_report = json.loads(report_file.read_text())
    assert second_report["points"]["sent_now"] == 0
    assert second_report["runs"]["complete_before"] == 2


def test_exported_history_file(steppe_server: ServerProcess, tmp_path: Path) -> None:
    """Rows as W&B's history export gives them (_step, _timestamp, _runtime, metrics)."""
    folder = tmp_path / f"export-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    rows = [
        {
            "_step": s,
            "_timestamp": 1.7e9 + s,
            "_runtime": s,
            "loss": 2.0 / (s + 1),
            "note": "text is skipped",
        }
        for s in range(50)
    ]
    (folder / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    csv_rows = ["_step,_timestamp,acc"] + [f"{s},{1.7e9 + s},{s / 50}" for s in range(50)]
    (folder / "other.csv").write_text("\n".join(csv_rows) + "\n")
    report = sources.run(steppe.Client(steppe_server.http_url), WandbSource(folder), progress=False)
    assert report["ok"], report["differences"]
    assert report["points"]["in_steppe"] == 100
    client = steppe.Client(steppe_server.http_url)
    runs = {
        r.info.run_name: r
        for r in client.search_runs(None)
        if r.data.tags.get("wandb.history_file")
    }
    loss = client.get_metric_history(runs["history"].info.run_id, "loss")
    assert sorted((m.step, m.timestamp, m.value) for m in loss) == [
        (s, round((1.7e9 + s) * 1000), 2.0 / (s + 1)) for s in range(50)
    ]


def test_damaged_record_is_reported() -> None:
    from steppe.v1 import wandb_records_pb2 as pb  # only the door module uses it in steppe

    payloads = []
    for step in range(3):
        record = pb.Record(num=step)
        record.history.item.add(key="x", value_json=str(step))
        record.history.item.add(key="_step", value_json=str(step))
        payloads.append(record.SerializeToString())
    big = pb.Record()
    big.history.item.add(key="blob", value_json='"' + "z" * 70_000 + '"')  # spans 3 blocks
    payloads.append(big.SerializeToString())
    data = bytearray(wandb_wire.frame(payloads))
    import io

    assert [r for r in wandb_wire.records(io.BytesIO(bytes(data)))] == payloads
    data[7 + 7 + 2] ^= 0xFF  # inside the first record's data
    got = list(wandb_wire.records(io.BytesIO(bytes(data))))
    assert isinstance(got[0], wandb_wire.Broken) and "CRC" in got[0].reason
    assert got[1:] == payloads[1:]
