"""The ``steppe`` command: ``server`` (foreground or background), ``ui``, ``sync`` and ``sql``.

Parses arguments and wires things up; the server side is imported only when needed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import select
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from steppe import __version__, config

if TYPE_CHECKING:
    from steppe.server import ServerOptions

EXIT_LOCKED = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steppe",
        description="Experiment tracking built for throughput (MLflow's API over gRPC, "
        "Parquet and DuckDB).",
    )
    parser.add_argument("--version", action="version", version=f"steppe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    server = sub.add_parser(
        "server",
        help="run the tracking server (gRPC ingest + HTTP API and UI) in the foreground",
        description="Run the steppe server for one data dir. Clients set "
        "STEPPE_TRACKING_URI=http://HOST:HTTP_PORT and learn the gRPC port from it.",
    )
    server.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"where runs are stored (default: ./{config.DEFAULT_DATA_DIR} or $STEPPE_DATA_DIR)",
    )
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    server.add_argument(
        "--http-port",
        type=int,
        default=config.DEFAULT_HTTP_PORT,
        help=f"HTTP port for the UI and APIs (default {config.DEFAULT_HTTP_PORT}"
        "; 0 picks a free one)",
    )
    server.add_argument(
        "--grpc-port",
        type=int,
        default=config.DEFAULT_GRPC_PORT,
        help=f"gRPC port for metric streams (default {config.DEFAULT_GRPC_PORT}"
        "; 0 picks a free one)",
    )
    server.add_argument(
        "--idle-timeout-s",
        type=float,
        default=None,
        help="stop after this many seconds with no clients (default: never)",
    )
    server.add_argument(
        "--token",
        default=None,
        help="require this bearer token from every client (default: $STEPPE_TOKEN; "
        "clients set STEPPE_TOKEN or MLFLOW_TRACKING_TOKEN)",
    )
    server.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        help="PEM certificate chain: serve HTTPS and gRPC over TLS",
    )
    server.add_argument("--tls-key", type=Path, default=None, help="PEM private key for --tls-cert")
    server.add_argument(
        "--background",
        action="store_true",
        help="detach; return once the server is ready (used by clients)",
    )

    ui = sub.add_parser(
        "ui",
        help="serve the web UI for this folder's data dir (starting a server if none runs)",
    )
    ui.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"default: ./{config.DEFAULT_DATA_DIR} or $STEPPE_DATA_DIR",
    )
    ui.add_argument("--host", default="127.0.0.1", help="address to bind if starting a server")
    ui.add_argument(
        "--port",
        type=int,
        default=config.DEFAULT_HTTP_PORT,
        help="HTTP port if starting a server (default 5000; 0 picks a free one)",
    )
    sync = sub.add_parser(
        "sync",
        help="send points that killed or offline processes left in the local spool",
        description="Deliver every orphaned spool (points a process logged but the server "
        "never acked) to the server it was meant for. Safe to repeat: the server keeps "
        "each point once.",
    )
    sync.add_argument(
        "--spool-dir",
        type=Path,
        default=None,
        help="default: $STEPPE_SPOOL_DIR or ~/.cache/steppe/spool",
    )
    sync.add_argument("--timeout-s", type=float, default=60.0, help="per spool (default 60)")
    from steppe import sql

    sql.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "server":
        return _server(args)
    if args.command == "ui":
        return _ui(args)
    if args.command == "sync":
        return _sync(args)
    if args.command == "sql":
        from steppe import sql

        return sql.main(args)
    _parser().print_help()
    return 0


def _data_dir(arg: Path | None) -> Path:
    return arg.expanduser().resolve() if arg is not None else config.data_dir()


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _run_server(options: ServerOptions, on_ready: object = None) -> int:
    from steppe.lock import DataDirLocked
    from steppe.server import WalUnwritable, serve

    try:
        asyncio.run(serve(options, on_ready))  # type: ignore[arg-type]
    except WalUnwritable as exc:
        print(f"steppe: stopped, cannot write metrics: {exc}", file=sys.stderr)
        return 1
    except DataDirLocked as exc:
        print(f"steppe: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except OSError as exc:
        print(f"steppe: cannot start the server: {exc}", file=sys.stderr)
        return 1
    return 0


def _server(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args.data_dir)
    if args.background:
        return _background(data_dir, args)
    _setup_logging()

    def ready(owner: object) -> None:
        print(
            f"steppe server listening on {owner.http_url} (gRPC port {owner.grpc_port})",  # type: ignore[attr-defined]
            flush=True,
        )

    return _run_server(_server_options(data_dir, args), ready)


def _server_options(data_dir: Path, args: argparse.Namespace) -> ServerOptions:
    from steppe.server import ServerOptions

    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("steppe: --tls-cert and --tls-key go together")
    return ServerOptions(
        data_dir,
        args.host,
        args.http_port,
        args.grpc_port,
        args.idle_timeout_s,
        token=args.token or config.token(),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def _background(data_dir: Path, args: argparse.Namespace) -> int:
    """Fork a detached server; exit 0 once it is ready, 3 if another server owns the dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "server.log"
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the server
        os.close(read_fd)
        os.setsid()
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        _setup_logging()

        def ready(owner: object) -> None:
            os.write(write_fd, b"ok")
            os.close(write_fd)

        code = _run_server(_server_options(data_dir, args), ready)
        os._exit(code)
    os.close(write_fd)
    deadline = time.monotonic() + config.server_start_timeout_s()
    answer, eof = b"", False
    while time.monotonic() < deadline and not eof:
        readable, _, _ = select.select([read_fd], [], [], 0.5)
        if readable:
            answer = os.read(read_fd, 16)
            eof = True
    os.close(read_fd)
    if answer == b"ok":
        return 0
    if eof:  # closed without "ok": the server exited, and its exit code says why
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) == EXIT_LOCKED:
            return EXIT_LOCKED
    tail = log_path.read_text(errors="replace").splitlines()[-20:] if log_path.exists() else []
    print("steppe: the background server did not start:\n" + "\n".join(tail), file=sys.stderr)
    return 1


def _sync(args: argparse.Namespace) -> int:
    from steppe.errors import SteppeError
    from steppe.spool import orphans
    from steppe.sync import replay

    root = args.spool_dir.expanduser().resolve() if args.spool_dir else config.spool_dir()
    pending = orphans(root)
    if not pending:
        print(f"steppe sync: nothing to send in {root}")
        return 0
    failed = 0
    for orphan in pending:
        try:
            delivery = replay(orphan, args.timeout_s)
        except SteppeError as exc:
            failed += 1
            print(
                f"steppe sync: {orphan.dir}: not delivered ({exc}); kept for the next try",
                file=sys.stderr,
            )
            continue
        if delivery is None:
            print(f"steppe sync: {orphan.dir}: another process is sending it")
        else:
            print(
                f"steppe sync: sent {delivery.points} points ({delivery.batches} batches) "
                f"to {delivery.tracking_uri}"
            )
    return 1 if failed else 0


def _ui(args: argparse.Namespace) -> int:
    from steppe.discovery import fetch_json
    from steppe.lock import live_owner

    data_dir = _data_dir(args.data_dir)
    _, owner = live_owner(data_dir)
    if owner is None:
        _setup_logging()

        def ready(owner: object) -> None:
            print(
                f"steppe UI: {owner.http_url}  (data dir {data_dir}; Ctrl-C to stop)",  # type: ignore[attr-defined]
                flush=True,
            )

        from steppe.server import ServerOptions

        return _run_server(ServerOptions(data_dir, args.host, args.port, 0), ready)
    print(
        f"steppe UI: {owner.http_url}  (served by the steppe server pid {owner.pid} "
        f"that owns {data_dir}; Ctrl-C to stop)",
        flush=True,
    )
    # Keep the (possibly idle-stopping) server alive while this command runs.
    try:
        while True:
            try:
                fetch_json(owner.http_url + "/api/steppe/v1/server-info", timeout_s=5.0)
            except Exception as exc:
                print(f"steppe: the server at {owner.http_url} went away: {exc}", file=sys.stderr)
                return 1
            time.sleep(30)
    except KeyboardInterrupt:
        return 0
