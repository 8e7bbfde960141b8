"""Forks and threads: a forked child logs on its own stream and never resends its parent's
points; threads logging into one run lose nothing."""

from __future__ import annotations

import os
import threading

import pytest

import steppe


# Python >= 3.12 warns on fork() with threads alive; forking a process that has the sender
# running is exactly the DataLoader case this test is about.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_logs_on_its_own_and_never_resends_the_parent_points(
    tracking: str,
) -> None:
    with steppe.start_run() as run:
        for step in range(5000):
            steppe.log_metric("parent", float(step), step=step)  # some not yet sent at fork
        pid = os.fork()
        if pid == 0:  # the child: log to the inherited run, flush, leave without atexit
            code = 1
            try:
                for step in range(3000):
                    steppe.log_metric("child", float(step), step=step)
                steppe.flush()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        for step in range(5000, 6000):
            steppe.log_metric("parent", float(step), step=step)
    client = steppe.Client()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "parent")] == list(
        range(6000)
    )
    assert len(client.get_metric_history(run.info.run_id, "child")) == 3000
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_threads_logging_into_one_run_lose_nothing(tracking: str) -> None:
    with steppe.start_run() as run:

        def work(worker: int) -> None:
            for step in range(20_000):
                steppe.log_metric("shared", float(worker), step=worker * 20_000 + step)
                steppe.log_metric(f"own_{worker}", float(step), step=step)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    client = steppe.Client()
    shared = client.get_metric_history(run.info.run_id, "shared")
    assert [m.step for m in shared] == list(range(80_000))
    for w in range(4):
        assert len(client.get_metric_history(run.info.run_id, f"own_{w}")) == 20_000
