"""Progress of long work on stderr: a bar with the rate and the time left on a terminal, a few lines otherwise.

Passes report ``(label, done, total)`` through ``PassContext.progress``
(calibration batches, training steps, sensitivity layers). On a terminal one
line per label is rewritten in place::

    qcompile: calibrate: 3/4 [######################........] 2.4/s, 0:00:01 left

Elsewhere (a log file, a pipe, CI) a line is written at each quarter, with
the rate and the time so far, once the work has taken
:attr:`ProgressPrinter.QUIET_SECONDS`, so logs stay short. ``NO_COLOR`` needs nothing:
no colour is ever written.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressPrinter:
    """Progress on ``stream`` (stderr): an updating bar on a terminal, a line a quarter otherwise."""

    WIDTH = 30
    QUIET_SECONDS = 2.0  # off a terminal, work is logged once it has taken this long

    def __init__(self, stream=None, clock: Callable[[], float] = time.monotonic):
        self.stream = stream or sys.stderr
        self.clock = clock
        self.started: dict[str, tuple[float, int]] = {}  # label -> (time, count) at its first report
        self.last_done: dict[str, int] = {}
        self.last_quarter: dict[str, int] = {}

    def __call__(self, label: str, done: int, total: int | None) -> None:
        now = self.clock()
        if label not in self.started or done < self.last_done[label]:  # new, or counting again from the start
            self.started[label] = (now, done)
            self.last_quarter.pop(label, None)
        self.last_done[label] = done
        start, first = self.started[label]
        elapsed = now - start
        rate = (done - first) / elapsed if elapsed > 0 and done > first else None
        speed = f"{rate:.3g}/s" if rate else "-/s"
        tty = self.stream.isatty()
        if total:
            text = f"qcompile: {label}: {done}/{total}"
            if tty:
                filled = self.WIDTH * done // total
                left = _clock((total - done) / rate) if rate else "?"
                self.stream.write(f"\r{text} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {speed}, {left} left")
                if done == total:
                    self.stream.write("\n")
            elif elapsed >= self.QUIET_SECONDS:  # a log of work that ends sooner would only be noise
                quarter = 4 * done // total
                if quarter != self.last_quarter.get(label):
                    self.last_quarter[label] = quarter
                    self.stream.write(f"{text} ({speed}, {_clock(elapsed)} so far)\n")
        elif tty:
            self.stream.write(f"\rqcompile: {label}: {done} ({speed})")
        self.stream.flush()
