"""Faults with real processes and real signals: kill -9 of the server while clients stream,
and SIGTERM/SIGINT draining. Every acked point must be present exactly once."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import steppe
from tests.conftest import clean_env, start_server, wait_until

CLIENT = textwrap.dedent(
    """
    import sys, threading, time
    import steppe

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    run = steppe.start_run()
    print(run.info.run_id, flush=True)
    step = 0
    while not stop.is_set():
        for _ in range(200):
            steppe.log_metric("loss", step * 0.25, step=step)
            steppe.log_metric("acc", -step * 0.5, step=step)
            step += 1
        time.sleep(0.005)  # pacing, so the check below stays small; not synchronisation
    steppe.end_run()          # waits for every ack, across the server's restarts
    print(step, flush=True)
    """
)


def test_kill_9_server_repeatedly_while_clients_stream(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = clean_env(STEPPE_TRACKING_URI=str(data_dir), STEPPE_SPOOL_DIR=str(tmp_path / "spool"))
    server = start_server(data_dir)
    clients = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    run_ids = [c.stdout.readline().strip() for c in clients]  # type: ignore[union-attr]
    assert all(len(r) == 32 for r in run_ids), run_ids

    def progress() -> int:
        """Points the server holds for our runs right now (-1 while unreachable)."""
        client = steppe.Client(server.http_url)
        total = 0
        for run_id in run_ids:
            run = client.get_run(run_id)
            total += sum(
                int(m["count"])
                for m in client._conn.get_json(f"/api/steppe/v1/runs/{run_id}")["run"]["data"][
                    "metrics"
                ].values()
            )
            del run
        return total

    try:
        for _ in range(10):
            before = progress()
            # Kill at a moment when points are flowing (chosen by progress, not by time).
            wait_until(lambda before=before: progress() > before + 2000, timeout_s=30)
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(timeout=30)
            server.proc.stdout.close()  # type: ignore[union-attr]
            server = start_server(data_dir)
        for c in clients:
            c.stdin.write("stop\n")  # type: ignore[union-attr]
            c.stdin.flush()  # type: ignore[union-attr]
        logged = []
        for c in clients:
            out, err = c.communicate(timeout=120)
            assert c.returncode == 0, err
            logged.append(int(out.strip().splitlines()[-1]))
        client = steppe.Client(server.http_url)
        counts = client.sql(
            "SELECT run_id, key, count(*) AS n, count(DISTINCT step) AS d, min(step) AS lo, "
            "max(step) AS hi FROM metrics GROUP BY run_id, key"
        ).to_pylist()
        got = {(r["run_id"], r["key"]): (r["n"], r["d"], r["lo"], r["hi"]) for r in counts}
        for run_id, steps in zip(run_ids, logged, strict=True):
            for key in ("loss", "acc"):
                # Exactly once: every step present, none twice.
                assert got[(run_id, key)] == (steps, steps, 0, steps - 1), (run_id, key)
            assert client.get_run(run_id).info.status == "FINISHED"
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.communicate()
        assert server.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_flushes_to_parquet_and_exits_0(tmp_path: Path, sig: int) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir)
    client = steppe.Client(server.http_url)
    run = client.create_run()
    for step in range(10_000):
        client.log_metric(run.info.run_id, "x", float(step), step=step)
    client.flush()
    server.proc.send_signal(sig)
    assert server.proc.wait(timeout=60) == 0
    server.proc.stdout.close()  # type: ignore[union-attr]
    # The tail went to Parquet: nothing is left to replay from the WAL.
    assert list((data_dir / "metrics").glob("part-*.parquet"))
    wal = [p for p in (data_dir / "wal").glob("*.wal") if p.stat().st_size > 0]
    assert wal == []
    # And the lock was released: a new server can take the folder at once.
    server = start_server(data_dir)
    try:
        history = steppe.Client(server.http_url).get_metric_history(run.info.run_id, "x")
        assert len(history) == 10_000
    finally:
        assert server.stop() == 0
