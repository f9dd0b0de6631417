"""Layer sensitivity: which layers' quantization costs the most, and what to keep in float.

On the float emulation of the quantizing pass (:mod:`qcompile.quant.emulate`),
for every quantizable layer (its output grid and its weight grid together):

* *alone*: the model's output SQNR when only this layer is quantized;
* *without*: the SQNR when every layer but this one is quantized.

A layer with a low *alone* or a high *without* (compared with everything
quantized) is where the error comes from. :func:`suggest_skips` then adds
layers to a skip list, the most helpful first (by *without*), re-measuring
after each, until the output SQNR reaches the target. The emulation leaves
a skipped layer's output unquantized, where the real pipeline re-quantizes
it for the next quantized layer, so check the suggestion with a real run
(``--skip``), as the report does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcompile.diagnose.metrics import first_tensor, sqnr_db
from qcompile.errors import QCompileError
from qcompile.interpreter import Interpreter
from qcompile.ir.graph import Graph
from qcompile.pipeline import (
    SIMULATED,
    STATICALLY_CONVERTED,
    Pass,
    PassContext,
    PassManager,
    Pipeline,
    first_providing,
)
from qcompile.quant.emulate import quantizable_layers, quantized_twin


@dataclass
class Sensitivity:
    name: str
    op: str
    alone_db: float
    without_db: float


@dataclass
class SkipSuggestion:
    skip: list[str]
    baseline_db: float  # everything quantized (emulated)
    achieved_db: float
    target_db: float
    met: bool


class SensitivityAnalysis:
    """Emulated runs of ``graph`` (calibrated) with chosen layers quantized, for the pass ``target``.

    ``before`` are the passes between calibration and ``target`` (aciq,
    bitalloc, bias-correct...): they run once, on a copy.
    """

    def __init__(self, calibrated: Graph, rest: tuple[Pass, ...], ctx: PassContext, inputs: tuple,
                 reference: torch.Tensor):
        target = first_providing(rest, STATICALLY_CONVERTED, SIMULATED)
        index = rest.index(target) if target is not None else None
        if index is None:
            raise QCompileError("sensitivity analysis needs a convert or simulate pass in the pipeline",
                                hint="e.g. --passes ptq")
        self.target, self.ctx = rest[index], ctx
        self.prepared = calibrated.copy()
        if index:
            PassManager(Pipeline(rest[:index])).run(self.prepared, ctx)
        self.ctx.remaining_passes = rest[index:]
        self.inputs, self.reference = inputs, reference
        self.layers = quantizable_layers(self.prepared)
        self.names = [n.name for n in self.layers]

    def output(self, layers: set[str]) -> torch.Tensor:
        twin = quantized_twin(self.prepared, self.target, self.ctx, layers)
        return first_tensor(Interpreter(twin).run(*self.inputs)).float()

    def sqnr(self, layers: set[str]) -> float:
        return sqnr_db(self.output(layers), self.reference)

    def run(self) -> list[Sensitivity]:
        everything = set(self.names)
        rows = []
        for i, node in enumerate(self.layers):
            rows.append(Sensitivity(node.name, node.op, self.sqnr({node.name}), self.sqnr(everything - {node.name})))
            self.ctx.progress("sensitivity", i + 1, len(self.layers))
        return rows

    def suggest_skips(self, rows: list[Sensitivity], target_db: float, max_layers: int = 20) -> SkipSuggestion:
        everything = set(self.names)
        baseline = self.sqnr(everything)
        skip: list[str] = []
        achieved = baseline
        for row in sorted(rows, key=lambda r: -r.without_db):
            if row.op == "quantize":
                continue  # the input's own quantization: not a layer to keep in float
            if achieved >= target_db or len(skip) >= max_layers:
                break
            candidate = self.sqnr(everything - set(skip) - {row.name})
            if candidate > achieved:  # keep only layers that help in combination too
                skip.append(row.name)
                achieved = candidate
        return SkipSuggestion(skip, baseline, achieved, target_db, achieved >= target_db)
