"""``integerize``: decide every grid and weight code, leaving the backend-neutral integer stage.

requires: ``calibrated``    provides: ``converted``, ``integer-stage``

The decisions are ``convert``'s, made the same way for every backend
(:func:`qcompile.passes.convert.decide_grids`: qparams from statistics or
clip ranges, weight bits, ReLU6 grids); the graph is then rewritten into the
integer stage of :mod:`qcompile.integer.stage`: plain uint8 values, int8
weight codes, int32 biases, gemmlowp's ``(m0, exponent)`` multipliers and
code clamps, each on modules of :mod:`qcompile.integer.reference` that the
interpreter runs with exact integer semantics: what the integer model
computes, which every backend is checked against. It runs nothing of
torch's quantized engines. ``lower{backend=...}`` then puts the stage on one
backend's kernels; ``convert{backend=gemmlowp}`` is the two in one. Before
and after (the digit CNN)::

    %conv_layers_0 = conv2d(%quantize_x, $conv_layers.0.{weight,bias}) : f32[1,32,28,28] {act='relu', ...}  # mode=static ...

    %conv_layers_0 = conv2d(%quantize_x, $conv_layers.0.{weight,bias_q,multiplier,exponent}) : u8[1,32,28,28] {..., clamp_min=0, ..., target='qcompile.integer.reference.QConv2d'}  # mode=static ...

The stage covers the ops qcompile's kernels compute (conv2d, linear, add,
ReLU-like clamps, pooling, padding, reshaping); a graph with other
quantized ops is refused by name (``convert{backend=native}`` covers them).

Options:
    weight-bits: 2-8 (default 8), as for ``convert``.
    eight-bit: layers that keep 8-bit weights below that, as for ``convert``.
    relu6-grid: ``full`` (default) or ``observed``, as for ``convert``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from qcompile.passes.convert import decide_grids, require_scales

from qcompile.ir.graph import Graph
from qcompile.pipeline import (
    FLOAT_GRAPH_ONLY,
    INTEGER_STAGE,
    STATICALLY_CONVERTED,
    Pass,
    PassContext,
    PassResult,
    option,
    register_pass,
)


def integerize(graph: Graph, decisions) -> dict[str, int]:
    """Decide ``graph``'s grids with ``decisions``' options and rewrite it into the integer stage."""
    from qcompile.integer.stage import to_integer_stage

    counts = decide_grids(graph, decisions)
    require_scales(graph)
    return counts | to_integer_stage(graph)


@register_pass(default_for=(INTEGER_STAGE,))
@dataclass(frozen=True)
class Integerize(Pass):
    """Decide every grid and weight code: the backend-neutral integer stage, run exactly by the interpreter."""

    name = "integerize"
    requires = ("calibrated",)
    provides = ("converted", STATICALLY_CONVERTED, INTEGER_STAGE)
    forbids = FLOAT_GRAPH_ONLY
    backend: ClassVar[str] = "reference"  # the interpreter's exact integer reference: every grid is exact

    weight_bits: int = option(8, low=2, high=8)
    relu6_grid: Literal["full", "observed"] = "full"
    eight_bit: tuple[str, ...] = ()

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        graph.attrs.update(backend=self.backend)
        return PassResult(True, integerize(graph, self))
