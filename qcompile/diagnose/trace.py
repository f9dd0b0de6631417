"""Output error after every pass: where along the pipeline the error appeared.

:class:`ErrorTrace` runs the graph on one batch before the first pass and
after each pass, and compares the output with the first (float) run::

    | after | SQNR dB | top-1 agreement | seconds |
    | fuse | 71.85 | 1.0000 | 0.02 |
    | calibrate | 71.85 | 1.0000 | 3.10 |
    | convert | 11.52 | 0.8462 | 0.15 |
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from qcompile.diagnose.metrics import agreement, as_float, first_tensor, fmt_db, sqnr_db
from qcompile.interpreter import Interpreter
from qcompile.pipeline import Instrument


@dataclass
class TraceRow:
    after: str
    sqnr_db: float
    agreement: float | None
    seconds: float


class ErrorTrace(Instrument):
    """Output SQNR against the float graph after every pass, on ``inputs``."""

    def __init__(self, inputs: tuple):
        self.inputs = inputs
        self.reference: torch.Tensor | None = None
        self.rows: list[TraceRow] = []
        self._start = 0.0

    def _run(self, graph) -> torch.Tensor:
        out = first_tensor(Interpreter(graph).run(*self.inputs))
        return as_float(out)

    def before_pipeline(self, graph, ctx):
        self.reference = self._run(graph)

    def before_pass(self, index, p, graph, ctx):
        self._start = time.perf_counter()

    def after_pass(self, index, p, graph, result, ctx):
        seconds = time.perf_counter() - self._start
        out = self._run(graph)
        self.rows.append(TraceRow(p.name, sqnr_db(out, self.reference), agreement(out, self.reference), seconds))

    def table(self) -> str:
        lines = ["| after | SQNR dB | top-1 agreement | seconds |", "|---|---|---|---|"]
        for r in self.rows:
            agree = "-" if r.agreement is None else f"{r.agreement:.4f}"
            lines.append(f"| {r.after} | {fmt_db(r.sqnr_db)} | {agree} | {r.seconds:.2f} |")
        return "\n".join(lines)
