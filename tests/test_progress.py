"""Progress lines: rate and time left on a terminal, a line a quarter with the rate elsewhere (for long work)."""

from __future__ import annotations

import io

from qcompile.cli.progress import ProgressPrinter


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(stream, steps: int = 8, seconds_per_step: float = 0.5) -> str:
    now = [100.0]
    printer = ProgressPrinter(stream, clock=lambda: now[0])
    for done in range(1, steps + 1):
        printer("calibrate", done, steps)
        now[0] += seconds_per_step
    return stream.getvalue()


def test_a_terminal_gets_a_bar_with_the_rate_and_the_time_left():
    text = _run(_Terminal())
    lines = text.split("\r")
    assert "qcompile: calibrate: 5/8 [##################............] 2/s, 0:00:02 left" in lines
    assert lines[-1].startswith("qcompile: calibrate: 8/8 [" + "#" * 30 + "]") and text.endswith("\n")


def test_a_log_gets_a_line_a_quarter_with_the_rate_once_the_work_takes_two_seconds():
    text = _run(io.StringIO())
    assert text.splitlines() == [
        "qcompile: calibrate: 5/8 (2/s, 0:00:02 so far)",
        "qcompile: calibrate: 6/8 (2/s, 0:00:02 so far)",
        "qcompile: calibrate: 8/8 (2/s, 0:00:04 so far)",
    ]


def test_quick_work_leaves_a_log_alone():
    assert _run(io.StringIO(), seconds_per_step=0.1) == ""


def test_a_label_used_again_counts_from_its_new_start():
    stream = io.StringIO()
    now = [0.0]
    printer = ProgressPrinter(stream, clock=lambda: now[0])
    for run in range(2):
        for done in range(1, 5):
            printer("sensitivity", done, 4)
            now[0] += 2.0 if run == 0 else 1.0
    assert stream.getvalue().splitlines()[-1] == "qcompile: sensitivity: 4/4 (1/s, 0:00:03 so far)"
