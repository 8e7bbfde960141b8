"""The client's buffer, sender and spool driven through disconnects, lost acks, resends and
a server that is away, against the in-memory transport: every point logged is stored exactly
once (Hypothesis explores the orders)."""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from steppe.buffer import FIELDS
from steppe.sender import Sender
from steppe.spool import Spool
from steppe.transport import MemoryTransport, StoredPoint

RUNS = ("run-a", "run-b")
KEYS = ("loss", "acc", "lr")


class SenderMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.transport = MemoryTransport()
        self.root = Path(tempfile.mkdtemp(prefix="steppe-machine-"))
        self.sender = Sender(
            lambda _after_failure: self.transport,
            buffer_points=64,
            batch_points=16,  # several batches per flush
            send_interval_s=0.002,
            spool=lambda stream_id: Spool(self.root, stream_id, "memory://"),
            max_inflight_bytes=1024,  # most unacked batches are re-read from the spool
            window=4,
        )
        self.logged: list[StoredPoint] = []
        self.counter = 0
        self.down = False

    def _log(self, run_id: str, key: str, n: int) -> None:
        """What Client.log_metric does: a registry lookup and a buffer append."""
        buffer = self.sender.buffer
        sid = buffer.registry.series_id(run_id, key)
        self.sender.start()
        for _ in range(n):
            self.counter += 1
            step, ts, value = self.counter, 1_700_000_000_000 + self.counter, self.counter / 8
            buffer.points.extend((sid, step, ts, value))
            self.logged.append(StoredPoint(run_id, key, step, ts, value))
            if len(buffer.points) > self.sender.buffer_points * FIELDS:
                self.sender.overflow()

    @rule(run_id=st.sampled_from(RUNS), key=st.sampled_from(KEYS), n=st.integers(1, 40))
    def log(self, run_id: str, key: str, n: int) -> None:
        self._log(run_id, key, n)

    @rule(stored=st.booleans())
    def break_the_stream(self, stored: bool) -> None:
        self.transport.fail_next(stored=stored)

    @rule()
    def server_goes_away(self) -> None:
        self.down = True
        self.transport.set_down(True)

    @precondition(lambda self: self.down)
    @rule()
    def server_comes_back(self) -> None:
        self.down = False
        self.transport.set_down(False)

    @rule()
    def flush(self) -> None:
        self.transport.set_down(False)
        self.down = False
        self.sender.flush(30.0)
        self.check_exactly_once()

    def check_exactly_once(self) -> None:
        stored = Counter(self.transport.points)
        assert stored == Counter(self.logged), (
            f"{len(self.transport.points)} stored for {len(self.logged)} logged; "
            f"duplicates: {[p for p, n in stored.items() if n > 1][:3]}, "
            f"missing: {list(Counter(self.logged) - stored)[:3]}"
        )

    @invariant()
    def never_stored_twice_nor_invented(self) -> None:
        stored = Counter(self.transport.points)
        assert all(n == 1 for n in stored.values())
        assert not stored - Counter(self.logged)

    def teardown(self) -> None:
        try:
            self.transport.set_down(False)
            self.sender.flush(30.0)
            self.check_exactly_once()
        finally:
            self.sender.shutdown(5.0)
            shutil.rmtree(self.root, ignore_errors=True)


SenderMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=25, deadline=None, database=None
)
test_every_point_is_stored_exactly_once = SenderMachine.TestCase


def test_the_machine_can_see_a_lost_point() -> None:
    """The check above can fail: a transport that forgets a stored batch is caught."""
    machine = SenderMachine()
    try:
        machine.log("run-a", "loss", 30)
        machine.sender.flush(30.0)
        del machine.transport.points[3]
        try:
            machine.check_exactly_once()
        except AssertionError as exc:
            assert "missing" in str(exc)
        else:
            raise AssertionError("a lost point went unnoticed")
    finally:
        machine.transport.points.clear()
        machine.logged.clear()
        machine.sender.shutdown(5.0)
        shutil.rmtree(machine.root, ignore_errors=True)


def test_a_lost_ack_is_resent_and_dropped_by_the_server() -> None:
    """Stored, ack lost, stream broken: the sender resends, the watermark drops the copy."""
    machine = SenderMachine()
    try:
        machine.transport.fail_next(stored=True)
        machine.log("run-a", "loss", 50)
        machine.sender.flush(30.0)
        machine.check_exactly_once()
        assert machine.transport.resent_batches >= 1
        assert machine.transport.calls >= 2
    finally:
        machine.sender.shutdown(5.0)
        shutil.rmtree(machine.root, ignore_errors=True)
