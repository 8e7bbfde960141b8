"""The ``steppe`` command: ``server`` (foreground or background), ``ui``, ``sync`` and ``sql``.

Parses arguments and wires things up; the server side is imported only when needed.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import select
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from steppe import __version__, config

if TYPE_CHECKING:
    from steppe.query.server import ServerOptions
    from steppe.spool import Orphan

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
        "clients set STEPPE_TOKEN or MLFLOW_TRACKING_TOKEN). Visible in ps: prefer "
        "$STEPPE_TOKEN or --token-file",
    )
    server.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="read the token from this file (its first line)",
    )
    server.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        help="PEM certificate chain: serve HTTPS and gRPC over TLS",
    )
    server.add_argument("--tls-key", type=Path, default=None, help="PEM private key for --tls-cert")
    server.add_argument(
        "--allowed-hosts",
        default=None,
        help="comma-separated Host header patterns to serve, * wildcards, a pattern without "
        "port matches any port (default: localhost,127.0.0.1,[::1] and the --host address)",
    )
    server.add_argument(
        "--allowed-origins",
        default="",
        help="comma-separated Origins (besides the server's own) whose pages may send "
        "writes (POST/PUT/PATCH/DELETE); default: none",
    )
    server.add_argument(
        "--http-idle-timeout-s",
        type=float,
        default=15.0,
        help="close HTTP connections idle or sending headers for this long (default 15)",
    )
    server.add_argument(
        "--stream-retention-s",
        type=_positive_float,
        default=7 * 86_400.0,
        help="forget a stream's watermark once it sent nothing for this long; a spool "
        "older than this is refused by the server (default 604800: 7 days)",
    )
    server.add_argument(
        "--grpc-keepalive-s",
        type=_positive_float,
        default=60.0,
        help="ping a gRPC connection silent for this long and close it if the ping is not "
        "answered within min(20 s, this), freeing its stream (default 60)",
    )
    server.add_argument(
        "--http-max-connections",
        type=_positive_int,
        default=256,
        help="serve at most this many HTTP connections at once; more get a 503 and are "
        "closed (default 256; at most half the open-files limit)",
    )
    server.add_argument(
        "--catalog",
        default=None,
        metavar="DSN",
        help="keep experiments, runs, the registry and stream watermarks in this database "
        "instead of the data dir's SQLite file: postgresql://USER@HOST:PORT/DB (or "
        "$STEPPE_CATALOG; a password is best left to PGPASSWORD or ~/.pgpass)",
    )
    server.add_argument(
        "--storage",
        default=None,
        metavar="URI",
        help="keep artifacts and model files in s3://BUCKET/PREFIX (endpoint and credentials "
        "from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...; or $STEPPE_STORAGE) instead of the "
        "data dir; the WAL, metrics Parquet files and SQLite stay in the data dir",
    )
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
        type=_port,
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
    sync.add_argument(
        "--tracking-uri",
        default=None,
        metavar="URI",
        help="deliver to this server (http://host:port or a data dir) instead of the one "
        "each spool was logged for (e.g. a spool aimed at a wrong URI)",
    )
    sync.add_argument(
        "--discard",
        action="append",
        default=[],
        metavar="RUN",
        help="drop what is spooled for run RUN instead of sending it (repeatable)",
    )
    project = sub.add_parser(
        "run",
        help="run an MLflow Project (MLproject folder, .py/.sh entry point, git repository)",
        description="Run a project's entry point as a new run, like `mlflow run`: params "
        "logged first, the command attached to the run through MLFLOW_RUN_ID and "
        "MLFLOW_TRACKING_URI, the run FINISHED or FAILED by the command's exit status.",
    )
    project.add_argument("uri", help="a project folder, or a git URI (…#subfolder)")
    project.add_argument("-e", "--entry-point", default="main")
    project.add_argument("-v", "--version", default=None, help="git commit or branch")
    project.add_argument(
        "-P",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter (repeatable)",
    )
    project.add_argument(
        "--env-manager",
        default="local",
        help="local (this Python), virtualenv (python -m venv from python_env.yaml) or uv",
    )
    project.add_argument("--experiment-name", default=None)
    project.add_argument("--experiment-id", default=None)
    project.add_argument("--run-name", default=None)
    from steppe import sql
    from steppe.importers import commands

    sql.add_parser(sub)
    commands.add_parsers(sub)
    return parser


def _project_run(args: argparse.Namespace) -> int:
    from steppe import projects

    params: dict[str, str] = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"steppe run: -P {item!r}: give NAME=VALUE", file=sys.stderr)
            return 2
        params[name] = value
    try:
        submitted = projects.run(
            args.uri,
            entry_point=args.entry_point,
            version=args.version,
            parameters=params,
            experiment_name=args.experiment_name,
            experiment_id=args.experiment_id,
            run_name=args.run_name,
            env_manager=args.env_manager,
            synchronous=False,
        )
    except projects.ExecutionException as exc:
        print(f"steppe run: {exc}", file=sys.stderr)
        return 2
    try:
        ok = submitted.wait()
    except KeyboardInterrupt:
        print(f"steppe run: interrupted; run {submitted.run_id} is KILLED", file=sys.stderr)
        return 130
    print(
        f"steppe run: run {submitted.run_id} {submitted.get_status()}",
        file=sys.stderr,
    )
    return 0 if ok else (submitted.returncode or 1)


def _port(raw: str) -> int:
    """argparse type: a TCP port, 0-65535 (0 picks a free one)."""
    try:
        port = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: must be 0-65535")
    return port


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "server":
        return _server(args)
    if args.command == "ui":
        return _ui(args)
    if args.command == "sync":
        return _sync(args)
    if args.command == "run":
        return _project_run(args)
    if args.command == "sql":
        from steppe import sql

        return sql.main(args)
    if args.command == "import":
        from steppe.importers import commands

        return commands.main(args)
    if args.command == "export":
        from steppe.importers import export

        return export.main(args)
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


def _run_server(options: ServerOptions, on_ready: object = None, port_flag: str = "") -> int:
    from steppe.ingest.catalog import CatalogUnavailable
    from steppe.ingest.storage import StorageError
    from steppe.lock import DataDirLocked
    from steppe.query.server import WalUnwritable, serve

    try:
        asyncio.run(serve(options, on_ready))  # type: ignore[arg-type]
    except WalUnwritable as exc:
        print(f"steppe: stopped, cannot write metrics: {exc}", file=sys.stderr)
        return 1
    except DataDirLocked as exc:
        print(f"steppe: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except CatalogUnavailable as exc:
        print(f"steppe: {exc}", file=sys.stderr)
        return 1
    except StorageError as exc:
        print(f"steppe: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if port_flag and exc.errno == errno.EADDRINUSE:
            print(
                f"steppe: port {options.http_port} is in use; pick another with "
                f"{port_flag} PORT (0 picks a free one)",
                file=sys.stderr,
            )
            return 1
        print(f"steppe: cannot start the server: {exc}", file=sys.stderr)
        return 1
    return 0


def _server(args: argparse.Namespace) -> int:
    # The data dir, its files and the log are the user's alone (0700 / 0600).
    os.umask(0o077)
    data_dir = _data_dir(args.data_dir)
    if args.token is not None:
        print(
            "steppe: warning: --token is visible to other users (ps); "
            "prefer STEPPE_TOKEN or --token-file",
            file=sys.stderr,
        )
    if args.background:
        return _background(data_dir, args)
    _setup_logging()

    def ready(owner: object) -> None:
        url = owner.http_url  # type: ignore[attr-defined]
        print(
            f"steppe server listening on {url} (gRPC port {owner.grpc_port})\n"  # type: ignore[attr-defined]
            f"  open {url}/ in a browser for the UI\n"
            f"  data dir {data_dir}\n"
            "  Ctrl+C (or SIGTERM) to stop",
            flush=True,
        )

    return _run_server(_server_options(data_dir, args), ready)


def _server_options(data_dir: Path, args: argparse.Namespace) -> ServerOptions:
    from steppe.query.server import ServerOptions

    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("steppe: --tls-cert and --tls-key go together")
    return ServerOptions(
        data_dir,
        args.host,
        args.http_port,
        args.grpc_port,
        args.idle_timeout_s,
        token=args.token or _token_file(args.token_file) or config.token(),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        allowed_hosts=(
            None
            if args.allowed_hosts is None
            else tuple(h.strip() for h in args.allowed_hosts.split(",") if h.strip())
        ),
        allowed_origins=tuple(o.strip() for o in args.allowed_origins.split(",") if o.strip()),
        http_idle_timeout_s=args.http_idle_timeout_s,
        stream_retention_s=args.stream_retention_s,
        grpc_keepalive_s=args.grpc_keepalive_s,
        http_max_connections=args.http_max_connections,
        catalog=args.catalog or config.catalog(),
        storage=args.storage or config.storage(),
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _token_file(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        lines = path.expanduser().read_text().splitlines()
    except OSError as exc:
        raise SystemExit(f"steppe: --token-file: cannot read {path}: {exc.strerror}") from exc
    if not lines or not lines[0].strip():
        raise SystemExit(f"steppe: --token-file: {path} is empty")
    return lines[0].strip()


def _background(data_dir: Path, args: argparse.Namespace) -> int:
    """Fork a detached server; exit 0 once it is ready, 3 if another server owns the dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "server.log"
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the server
        os.close(read_fd)
        os.setsid()
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
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
    if args.discard:
        return _discard(pending, set(args.discard))
    if not pending:
        print(f"steppe sync: nothing to send in {root}")
        return 0
    failed = 0
    for orphan in pending:
        try:
            delivery = replay(orphan, args.timeout_s, args.tracking_uri)
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
            files = f" and {delivery.artifacts} artifact(s)" if delivery.artifacts else ""
            print(
                f"steppe sync: sent {delivery.points} points ({delivery.batches} batches)"
                f"{files} to {delivery.tracking_uri}"
            )
    return 1 if failed else 0


def _discard(pending: list[Orphan], runs: set[str]) -> int:
    """Drop the spools holding only the given runs; refuse spools shared with other runs."""
    from steppe import wire
    from steppe.sync import runs_in

    dropped: set[str] = set()
    failed = 0
    for orphan in pending:
        held = runs_in(orphan)
        if not held & runs:
            continue
        others = held - runs
        if others:
            failed += 1
            print(
                f"steppe sync: {orphan.dir} also holds run(s) {', '.join(sorted(others))}; "
                "discard those too, or send it",
                file=sys.stderr,
            )
            continue
        claim = orphan.claim()
        if claim is None:
            failed += 1
            print(f"steppe sync: {orphan.dir}: another process is sending it", file=sys.stderr)
            continue
        points = sum(wire.MetricBatch.FromString(payload).count for _, payload in orphan.records())
        calls = len(orphan.ops())
        orphan.remove(claim)
        dropped |= held
        print(
            f"steppe sync: discarded {points} points and {calls} journaled calls of run(s) "
            f"{', '.join(sorted(held))} from {orphan.dir}"
        )
    for run in sorted(runs - dropped):
        if failed == 0:
            print(f"steppe sync: nothing spooled for run {run}", file=sys.stderr)
    return 1 if failed or not dropped else 0


def _ui(args: argparse.Namespace) -> int:
    from steppe.discovery import fetch_json
    from steppe.lock import live_owner

    uri = config.tracking_uri() if args.data_dir is None else None
    if uri:
        from steppe.discovery import SERVER_INFO_PATH, local_data_dir
        from steppe.errors import SteppeError

        try:
            named = local_data_dir(uri)
            if named is None:  # a server elsewhere: its UI is at its URL
                fetch_json(uri.rstrip("/") + SERVER_INFO_PATH, timeout_s=config.connect_timeout_s())
                print(f"steppe UI: {uri.rstrip('/')}  (the server STEPPE_TRACKING_URI names)")
                return 0
        except SteppeError as exc:
            print(f"steppe ui: {exc}", file=sys.stderr)
            return 1
        args.data_dir = named
    data_dir = _data_dir(args.data_dir)
    _, owner = live_owner(data_dir)
    if owner is None:
        _setup_logging()

        def ready(owner: object) -> None:
            print(
                f"steppe UI: {owner.http_url}/  (data dir {data_dir}; "  # type: ignore[attr-defined]
                "Ctrl+C to stop)",
                flush=True,
            )

        from steppe.query.server import ServerOptions

        return _run_server(ServerOptions(data_dir, args.host, args.port, 0), ready, "--port")
    print(
        f"steppe UI: {owner.http_url}/  (served by the steppe server pid "
        f"{owner.pid} that owns {data_dir}; Ctrl+C to stop)",
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
