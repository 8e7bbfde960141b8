"""Many short streams: the server's memory and catalog rows after N one-batch streams, and
again once their watermarks expired (``--stream-retention-s``).

    python benchmarks/streams.py [--streams 50000] [--rounds 1] [--retention-s 180] [--smoke]

Each round opens N streams, waits until their watermarks are saved (rows = N), then until
they expired (rows = 0): with expiry, RSS and rows stay flat from round to round.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import struct
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Server, table

from steppe import stream_ids, wire


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def catalog_rows(data_dir: Path) -> int:
    db = sqlite3.connect(f"file:{data_dir / 'catalog.sqlite'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM stream_watermarks").fetchone()[0])
    finally:
        db.close()


def one_batch(stream_id: str, run_id: str) -> wire.MetricBatch:
    return wire.MetricBatch(
        stream_id=stream_id,
        seq=1,
        run_ids=[run_id],
        keys=["loss"],
        count=1,
        run_index=bytes(4),
        key_index=bytes(4),
        step=struct.pack("<q", 0),
        timestamp_ms=struct.pack("<q", int(time.time() * 1000)),
        value=struct.pack("<d", 0.5),
    )


def open_streams(grpc_port: int, run_id: str, count: int, workers: int = 8) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = wire.IngestStub(channel)  # type: ignore[no-untyped-call]

        def send(_: int) -> None:
            batch = one_batch(stream_ids.new_stream_id(), run_id)
            acks = list(stub.StreamMetrics(iter([batch]), timeout=60))
            assert acks and acks[-1].acked_seq == 1, acks

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(send, range(count)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=50_000)
    parser.add_argument("--retention-s", type=float, default=180.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="300 streams, 20 s retention")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    count = 300 if args.smoke else args.streams
    retention_s = 20.0 if args.smoke else args.retention_s
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="steppe-bench-streams-") as tmp:
        data_dir = Path(tmp) / "data"
        server = Server.start(data_dir, "--stream-retention-s", str(retention_s))
        try:
            info = server.get("/api/steppe/v1/server-info")
            run = json.loads(
                _post(server.http_url + "/api/2.0/mlflow/runs/create", {"experiment_id": "0"})
            )["run"]
            run_id = run["info"]["run_id"]
            pid = server.proc.pid
            base = rss_mib(pid)
            for round_ in range(1, args.rounds + 1):
                started = time.monotonic()
                open_streams(int(info["grpc_port"]), run_id, count)
                elapsed = time.monotonic() - started
                deadline = time.monotonic() + 60
                while catalog_rows(data_dir) < count and time.monotonic() < deadline:
                    time.sleep(0.2)  # waiting for the periodic flush to save the watermarks
                rows_after, rss_after = catalog_rows(data_dir), rss_mib(pid)
                deadline = time.monotonic() + retention_s + 120
                while catalog_rows(data_dir) > 0 and time.monotonic() < deadline:
                    time.sleep(0.2)  # waiting for the expiry sweep
                rows.append(
                    {
                        "round": round_,
                        "streams": count,
                        "streams_per_s": count / elapsed,
                        "rss_start_mib": base,
                        "rss_after_mib": rss_after,
                        "rows_after": rows_after,
                        "rss_expired_mib": rss_mib(pid),
                        "rows_expired": catalog_rows(data_dir),
                    }
                )
            stored = server.stored_points(run_id)
        finally:
            server.stop()
    for row in rows:
        row["stored"] = stored
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(table(rows, list(rows[0])))
    ok = stored == count * args.rounds and all(r["rows_expired"] == 0 for r in rows)
    return 0 if ok else 1


def _post(url: str, body: dict[str, object]) -> str:
    import urllib.request

    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return str(response.read().decode())


if __name__ == "__main__":
    raise SystemExit(main())
