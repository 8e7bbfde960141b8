"""The progress line of an import on stderr: points done of the total, points/s, ETA.

Redrawn in place on a terminal (at most 5 times a second); elsewhere (a log file, CI) one
line every 5 s and a last one at the end. Never raises: a closed stderr only silences it.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """``add(points)`` as points are acked; ``finish()`` prints the last line.

    Example::

        bar = Progress(total_points=10_000_000, total_runs=100)
        bar.add(32768)
        bar.finish()
    """

    def __init__(
        self,
        total_points: int | None,
        total_runs: int,
        stream: TextIO | None = None,
        enabled: bool = True,
    ) -> None:
        self.total_points = total_points
        self.total_runs = total_runs
        self.points = 0
        self.runs = 0
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = enabled
        self._tty = enabled and hasattr(self._stream, "isatty") and self._stream.isatty()
        self._started = time.monotonic()
        self._drawn_at = 0.0

    def add(self, points: int = 0, runs: int = 0) -> None:
        self.points += points
        self.runs += runs
        now = time.monotonic()
        if now - self._drawn_at >= (0.2 if self._tty else 5.0):
            self._draw(now, final=False)

    def rate(self) -> float:
        elapsed = time.monotonic() - self._started
        return self.points / elapsed if elapsed > 0 else 0.0

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self._started, 1e-9)
        rate = self.points / elapsed
        if self.total_points is None:  # a server source: its histories are counted as read
            return (
                f"steppe import: {self.points:,} points, runs {self.runs:,}/"
                f"{self.total_runs:,} (ETA by runs {_duration(self._eta_by_runs(elapsed))}), "
                f"{rate:,.0f} points/s, {_duration(elapsed)} elapsed"
            )
        share = self.points / self.total_points if self.total_points else 1.0
        left = (self.total_points - self.points) / rate if rate > 0 else 0.0
        eta = f"ETA {_duration(left)}" if self.points < self.total_points else "done"
        return (
            f"steppe import: {self.points:,}/{self.total_points:,} points ({share:.0%}), "
            f"runs {self.runs:,}/{self.total_runs:,}, {rate:,.0f} points/s, "
            f"{_duration(elapsed)} elapsed, {eta}"
        )

    def _eta_by_runs(self, elapsed: float) -> float:
        return elapsed / self.runs * (self.total_runs - self.runs) if self.runs else 0.0

    def _draw(self, now: float, final: bool) -> None:
        self._drawn_at = now
        if not self._enabled:
            return
        try:
            if self._tty:
                self._stream.write("\r\x1b[K" + self.line(now) + ("\n" if final else ""))
            else:
                self._stream.write(self.line(now) + "\n")
            self._stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: the import goes on
            self._enabled = False

    def finish(self) -> None:
        self._draw(time.monotonic(), final=True)
