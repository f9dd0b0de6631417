"""Layer sensitivity: which layers' quantization costs the most, and what to keep in float.

On the float emulation of the quantizing pass (:mod:`qcompile.quant.emulate`),
for every quantizable layer (its output grid and its weight grid together):

* *alone*: the model's output SQNR when only this layer is quantized;
* *without*: the SQNR when every layer but this one is quantized.

A layer with a low *alone* or a high *without* (compared with everything
quantized) is where the error comes from. :func:`suggest_skips` then adds
layers to a skip list, the most helpful first (by *without*), re-measuring
after each, until the output SQNR reaches the target.

The emulation quantizes what the real pipeline would with those layers
skipped: a float layer keeps its float weight, but its output is still put
on its grid wherever a quantized layer reads it (the real pipeline puts a
quantize stub there, calibrated on the same values), and a quantized
layer's inputs are on their grids. The fully quantized twin is built once;
each measurement runs it with float weights and skipped fake-quantizations
where the chosen layers say, so a 64-layer network is ranked in about 130
forward passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcompile.diagnose.metrics import first_tensor, sqnr_db
from qcompile.errors import QCompileError
from qcompile.interpreter import Interpreter
from qcompile.ir.graph import Graph
from qcompile.ir.modules import build_module
from qcompile.ir.node import Node
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
            PassManager(Pipeline(rest)).run(self.prepared, ctx, until=index)
        self.ctx.remaining_passes = rest[index:]
        self.inputs, self.reference = inputs, reference
        self.layers = quantizable_layers(self.prepared)
        self.names = [n.name for n in self.layers]
        twin = quantized_twin(self.prepared, self.target, self.ctx)
        self._runner = _MixedRun(twin, self.prepared.params)
        # the fake-quantization of each layer's output, and the layers that read it on its grid
        self._grid_node = {twin.inputs(n)[0].name: n.name for n in twin.nodes() if n.op == "fake_quantize"}
        self._readers = {name: _quantized_readers(self.prepared, self.prepared.node(name), set(self.names))
                         for name in self._grid_node}

    def output(self, layers: set[str]) -> torch.Tensor:
        """The model's output with only ``layers`` quantized (and what the real pipeline quantizes with them)."""
        self._runner.float_weights = {name for name in self.names if name not in layers}
        self._runner.bypass = {fq for name, fq in self._grid_node.items() if not self._quantizes(name, layers)}
        return first_tensor(self._runner.run(*self.inputs)).float()

    def _quantizes(self, name: str, layers: set[str]) -> bool:
        """Whether the value ``name`` is on its grid when ``layers`` are quantized: where one of them is
        ``name`` or reads it. A quantize stub exists only before a quantized layer (or when it is measured
        alone)."""
        read = bool(self._readers[name] & layers)
        if self.prepared.node(name).op == "quantize":
            return name in layers and (read or layers == {name})
        return name in layers or read

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


def _quantized_readers(graph: Graph, node: Node, layers: set[str]) -> set[str]:
    """The layers that read ``node``'s value on its grid: directly, or through ops that share it (pooling...)."""
    found: set[str] = set()
    frontier = [user for user, _ in graph.uses(node)]
    while frontier:
        user = frontier.pop()
        if user.name in layers:
            found.add(user.name)
        elif user.quant.shares is not None:
            frontier.extend(u for u, _ in graph.uses(user))
    return found


class _MixedRun(Interpreter):
    """The fully quantized twin, run with some layers' weights float and some fake-quantizations skipped."""

    def __init__(self, twin: Graph, float_params: dict[str, torch.Tensor]):
        super().__init__(twin)
        self.float_params = float_params
        self.float_weights: set[str] = set()  # layers that run on their float weight
        self.bypass: set[str] = set()  # fake-quantize nodes that pass their input through
        self._float_modules: dict[str, torch.nn.Module] = {}

    def module(self, node: Node) -> torch.nn.Module:
        if node.name not in self.float_weights:
            return super().module(node)
        if node.name not in self._float_modules:
            state = {key: self.float_params.get(p, self.graph.params[p]) for key, p in node.params.items()}
            self._float_modules[node.name] = build_module(node.target, node.attrs, state,
                                                          path=node.source.module_path)
        return self._float_modules[node.name]

    def _compute(self, node: Node, inputs: list) -> object:
        if node.name in self.bypass:
            return inputs[0]
        return super()._compute(node, inputs)
