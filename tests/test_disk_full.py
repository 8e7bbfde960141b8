"""Disk full: a clear error, no corrupt files, and nothing lost once space returns.

The data dir lives on a small tmpfs that the test mounts (needs root, as CI has)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import steppe
from tests.conftest import start_server, wait_until


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_then_space_returns(
    small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPPE_SPOOL_DIR", str(tmp_path / "spool"))  # not on the full disk
    data_dir = small_disk / "data"
    server = start_server(data_dir)
    client = steppe.Client(str(data_dir))
    run = client.create_run()
    steps = 400_000  # ~ 11 MB of WAL: far more than the 3 MB disk
    values = [float(i % 977) for i in range(steps)]
    client.log_series(run.info.run_id, "loss", values, steps=list(range(steps)))
    with pytest.raises(steppe.FlushTimeout, match="not acked"):
        client.flush(timeout_s=5)
    wait_until(lambda: "No space left" in "".join(server.output), timeout_s=30)
    # A server that cannot write exits non-zero (for its supervisor) instead of serving on.
    wait_until(lambda: server.proc.poll() is not None, timeout_s=30)
    assert server.proc.returncode != 0
    assert "cannot write metrics" in "".join(server.output)

    # Space returns; the server is restarted and the client's resend fills every gap.
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    server.proc.kill()
    server.proc.wait(timeout=30)
    server.proc.stdout.close()  # type: ignore[union-attr]
    server = start_server(data_dir)
    try:
        client.flush(timeout_s=60)
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in history] == list(range(steps))
        assert [m.value for m in history[:3]] == [0.0, 1.0, 2.0]
    finally:
        assert server.stop() == 0


def test_read_only_data_dir_fails_with_a_clear_message(small_disk: Path) -> None:
    import sys

    from tests.conftest import clean_env

    data_dir = small_disk / "data"
    server = start_server(data_dir)
    assert server.stop() == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "steppe",
            "server",
            "--data-dir",
            str(data_dir),
            "--http-port",
            "0",
            "--grpc-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert done.returncode != 0
    assert "Read-only file system" in done.stderr
    assert "Traceback" not in done.stderr
