"""Soak under faults: N clients stream while the server is killed with SIGKILL at a fixed
interval and restarted; at the end every client's end_run() must return and the server must
hold every point exactly once.

    python benchmarks/soak.py                          # 10 min, 8 clients, kill -9 every 20 s
    python benchmarks/soak.py --duration-s 60 --clients 4 --kill-every-s 10

Reports points sent (logged), acked (end_run returned, so all), stored, lost and duplicated
(both must be 0). Exit code 1 if anything was lost or duplicated.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Server, table

CLIENT = textwrap.dedent(
    """
    import sys, threading, time
    import steppe

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    run = steppe.start_run()
    print(run.info.run_id, flush=True)
    rate = float(sys.argv[1])  # steps per second (2 points each)
    step, start = 0, time.monotonic()
    while not stop.is_set():
        for _ in range(100):
            steppe.log_metrics({"loss": step * 0.25, "acc": -step * 0.5}, step=step)
            step += 1
        ahead = start + step / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    steppe.end_run()
    print(step, flush=True)
    """
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration-s", type=float, default=600)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--kill-every-s", type=float, default=20)
    parser.add_argument(
        "--points-per-s", type=float, default=50_000, help="per client (default 50,000)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="steppe-soak-") as tmp:
        data_dir = Path(tmp) / "data"
        env = {
            "STEPPE_TRACKING_URI": str(data_dir),
            "STEPPE_SPOOL_DIR": f"{tmp}/spool",
            "PATH": "/usr/bin:/bin",
        }
        import os

        env = {**{k: v for k, v in os.environ.items() if not k.startswith("STEPPE_")}, **env}
        server = Server.start(data_dir)
        clients = [
            subprocess.Popen(
                [sys.executable, "-c", CLIENT, str(args.points_per_s / 2)],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(args.clients)
        ]
        run_ids = [c.stdout.readline().strip() for c in clients]  # type: ignore[union-attr]
        kills = 0
        end = time.monotonic() + args.duration_s
        while time.monotonic() < end:
            time.sleep(min(args.kill_every_s, max(0.0, end - time.monotonic())))
            if time.monotonic() >= end:
                break
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait()
            server = Server.start(data_dir)
            kills += 1
            print(f"[{kills}] killed and restarted the server", file=sys.stderr, flush=True)
        sent = []
        for c in clients:
            c.stdin.write("stop\n")  # type: ignore[union-attr]
            c.stdin.flush()  # type: ignore[union-attr]
        for c in clients:
            out, _ = c.communicate(timeout=600)
            if c.returncode != 0:
                print("a client failed to end its run", file=sys.stderr)
                return 1
            sent.append(2 * int(out.strip().splitlines()[-1]))
        # The exact check reads the Parquet files the stopped server left (its tail is
        # flushed on SIGTERM) with a plain DuckDB, which may spill to disk: a distinct count
        # over hundreds of millions of points is beyond the server's sandboxed SQL limits.
        server.stop()
        import duckdb

        files = [str(p) for p in sorted((data_dir / "metrics").glob("part-*.parquet"))]
        rows = [
            {"run_id": r, "n": n, "d": d}
            for r, n, d in duckdb.connect()
            .execute(
                "SELECT run_id, count(*), count(DISTINCT (key, step)) "
                f"FROM read_parquet({files!r}) GROUP BY run_id"
            )
            .fetchall()
        ]
    stored = {r["run_id"]: (r["n"], r["d"]) for r in rows}
    total_sent = sum(sent)
    total_stored = sum(stored.get(r, (0, 0))[0] for r in run_ids)
    distinct = sum(stored.get(r, (0, 0))[1] for r in run_ids)
    result = {
        "clients": args.clients,
        "duration_s": args.duration_s,
        "kills": kills,
        "sent": total_sent,
        "acked": total_sent,
        "stored": total_stored,
        "lost": total_sent - distinct,
        "duplicated": total_stored - distinct,
    }
    print(table([result], list(result)))
    return 0 if result["lost"] == 0 and result["duplicated"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
