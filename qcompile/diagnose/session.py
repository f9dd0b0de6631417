"""The diagnostics of one compile run, as the command line switches them on.

:class:`Diagnostics` provides the instruments to run alongside the passes
(a :class:`~qcompile.diagnose.snapshot.Snapshot`, an
:class:`~qcompile.diagnose.trace.ErrorTrace`, pass timings), and afterwards
computes the per-layer errors, the sensitivity analysis with a suggested
skip list (checked by rerunning the pipeline with it), the comparison table
and the HTML report.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qcompile.diagnose.layers import LayerError, layer_errors
from qcompile.diagnose.metrics import agreement, as_float, first_tensor, sqnr_db
from qcompile.diagnose.report import ReportData, model_summary, write_report
from qcompile.diagnose.sensitivity import Sensitivity, SensitivityAnalysis, SkipSuggestion
from qcompile.diagnose.snapshot import Snapshot
from qcompile.diagnose.trace import ErrorTrace
from qcompile.interpreter import Interpreter
from qcompile.ir.graph import Graph
from qcompile.pipeline import PassContext, Timing


@dataclass
class Findings:
    layers: list[LayerError] = field(default_factory=list)
    sensitivity: list[Sensitivity] = field(default_factory=list)
    suggestion: SkipSuggestion | None = None
    verification: list[tuple[str, float, float | None]] = field(default_factory=list)


class Diagnostics:
    """Instruments and analyses for one run on ``inputs`` (a batch of diagnostic data)."""

    def __init__(self, inputs: tuple, trace: bool = True):
        self.inputs = inputs
        self.snapshot = Snapshot()
        self.trace = ErrorTrace(inputs) if trace else None
        self.timing = Timing()
        self.findings = Findings()
        self._reference: torch.Tensor | None = None

    def instruments(self) -> list:
        return [self.snapshot, self.timing] + ([self.trace] if self.trace is not None else [])

    def reference(self) -> torch.Tensor:
        """The float graph's output on the inputs (the trace's first run, else computed once)."""
        if self.trace is not None and self.trace.reference is not None:
            return self.trace.reference
        if self._reference is None:
            self._reference = as_float(first_tensor(Interpreter(self.snapshot.float_graph).run(*self.inputs)))
        return self._reference

    def score(self, graph: Graph) -> tuple[float, float | None]:
        out = as_float(first_tensor(Interpreter(graph).run(*self.inputs)))
        reference = self.reference()
        return sqnr_db(out, reference), agreement(out, reference)

    def per_layer(self, final: Graph) -> list[LayerError]:
        twin = self.snapshot.calibrated or self.snapshot.float_graph
        self.findings.layers = layer_errors(twin, final, self.inputs)
        return self.findings.layers

    def sensitivity(self, ctx: PassContext, target_db: float,
                    rerun: Callable[[list[str]], Graph], final: Graph) -> SkipSuggestion:
        """Run the analysis, suggest a skip list for ``target_db``, and check it with ``rerun(skip)``."""
        analysis = SensitivityAnalysis(self.snapshot.calibrated, self.snapshot.rest, ctx, self.inputs,
                                       self.reference())
        self.findings.sensitivity = analysis.run()
        suggestion = analysis.suggest_skips(self.findings.sensitivity, target_db)
        self.findings.suggestion = suggestion
        self.findings.verification = [("as compiled", *self.score(final))]
        if suggestion.skip:
            self.findings.verification.append((f"with the {len(suggestion.skip)} suggested skips",
                                               *self.score(rerun(suggestion.skip))))
        return suggestion

    def report(self, path: Path, title: str, pipeline: str, final: Graph, source: str, out_dir: Path | None,
               comparison_data=None) -> Path:
        comparison = self._compare(out_dir, comparison_data) if out_dir is not None and comparison_data else []
        data = ReportData(
            title=title, pipeline=pipeline, final=final, float_graph=self.snapshot.float_graph,
            calibrated=self.snapshot.calibrated, inputs=self.inputs,
            summary=model_summary(final, source, out_dir / "weights.pt" if out_dir else None),
            comparison=comparison, timings=[(n, s) for n, s, _ in self.timing.seconds],
            trace=self.trace.rows if self.trace else [], layers=self.findings.layers,
            sensitivity=self.findings.sensitivity, suggestion=self.findings.suggestion,
            verification=self.findings.verification)
        return write_report(data, path)

    def _compare(self, out_dir: Path, data) -> list:
        from qcompile.codegen import load_model, write_model
        from qcompile.compare import compare, state_size_bytes

        with tempfile.TemporaryDirectory() as tmp:
            write_model(self.snapshot.float_graph, tmp)
            float_model = load_model(tmp)
            emitted = load_model(out_dir)
            return compare([("float", float_model, state_size_bytes(float_model)),
                            ("emitted", emitted, state_size_bytes(emitted))], data, repeats=10)
