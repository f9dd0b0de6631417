"""An instrument that keeps what the diagnostics compare against."""

from __future__ import annotations

from qcompile.ir.graph import Graph
from qcompile.pipeline import Instrument, Pass


class Snapshot(Instrument):
    """The float graph before the first pass, and the graph right after calibration with the passes still to run.

    Instruments only observe: these are copies.
    """

    def __init__(self):
        self.float_graph: Graph | None = None
        self.calibrated: Graph | None = None
        self.rest: tuple[Pass, ...] = ()

    def before_pipeline(self, graph, ctx):
        self.float_graph = graph.copy()

    def before_pass(self, index, p, graph, ctx):
        if self.calibrated is None and "calibrated" in graph.facts:
            self.calibrated = graph.copy()
            self.rest = (p, *ctx.remaining_passes)
