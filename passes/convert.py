"""``convert``: choose scales and zero points, then rewrite onto integer kernels.

requires: ``calibrated``    provides: ``converted``

First every decision is made, the same for every backend: qparams from each
value's statistics (or an analytic clip range, when a pass set one) and its
observer's grid; a concatenation's grid given to the layers that make its
inputs, so that it copies codes instead of requantizing them
(:mod:`qcompile.quant.cat_grids`); weight bits (``weight-bits``, ReLU6 grids widened, below).
Then the quantized region is lowered onto one backend in
``qcompile/backends/``, each from those decisions, never through another:
``gemmlowp`` is ``integerize`` (the neutral integer stage: weights as integer
codes, int32 biases, fixed-point multipliers, :mod:`qcompile.integer.stage`)
followed by ``lower{backend=gemmlowp}`` (qcompile's kernels); ``native`` wraps
the same codes as torch's quantized tensors and runs torch's engines (x86 /
fbgemm / qnnpack, chosen by the quantization config: the rules of
:mod:`qcompile.backends.torch_ao.lowering`, whose values print as ``qu8``).
Before and after (``gemmlowp``, the digit CNN)::

    %conv_layers_0 = conv2d(%quantize_x, $conv_layers.0.{weight,bias}) : f32[1,32,28,28] {act='relu', ...}
    %conv_layers_0 = conv2d(%quantize_x, $conv_layers.0.{weight,bias_q,multiplier,exponent}) : u8[1,32,28,28] {input_zero_point=33, ..., target='qcompile.kernels.modules.QConv2d'}

Options:
    backend: ``auto`` (default), ``gemmlowp`` or ``native``. ``gemmlowp`` is
        qcompile's own integer kernels (:mod:`qcompile.kernels`: plain int8 /
        int32 tensors and fixed-point requantization, exact on full 8-bit
        activation grids; the emitted model exports with ``torch.export``);
        ``native`` is torch's quantized modules and ops (deprecated upstream;
        7-bit activation grids on x86). ``auto`` is ``gemmlowp`` where the
        integer stage covers every quantized op of the graph and ``native``
        otherwise, chosen before calibration (:mod:`qcompile.backends.choice`).
    weight-bits: 2-8 (default 8); below 8, every weight gets that many bits
        per output channel, in int8 containers.
    eight-bit: With ``weight-bits`` below 8, the layers (node or module path
        globs, or ``op:conv2d``) that keep 8-bit weights: per-layer bit widths,
        for the layers a model is most sensitive to (the accuracy-target search
        picks them by sensitivity).
    relu6-grid: ``full`` (default) gives a fused ReLU6 whose observed grid
        reaches past 6 the grid [0, 6] over the whole uint8 container, so
        that no clamp follows the layer, and 7-bit weights to the convs and
        linears that read it, so that x86's int16 pair sums cannot saturate
        (where one of them has per-tensor weights, the clamp stays instead:
        :mod:`qcompile.quant.relu6_grid`); ``observed`` keeps the observed
        grid and clamps the codes at 6, as ``convert`` always does after QAT
        (the grids and 8-bit weights are what training learned).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from qcompile.backends.channels_last import views_after_dequantize
from qcompile.backends.choice import AUTO, choose_backend
from qcompile.backends.torch_ao.lowering import RULES, convert_dequantize
from qcompile.errors import QCompileError
from qcompile.ir.graph import Graph
from qcompile.ir.node import QuantAnnotation
from qcompile.ir.quant_types import QParams
from qcompile.ir.types import TensorType
from qcompile.pipeline import (
    FLOAT_GRAPH_ONLY,
    STATICALLY_CONVERTED,
    Pass,
    PassContext,
    PassResult,
    option,
    register_pass,
)
from qcompile.quant.cat_grids import share_cat_grids
from qcompile.quant.clamps import clamp_to_bits
from qcompile.quant.config import matches_pattern
from qcompile.quant.op_table import FIXED, SPLITS
from qcompile.quant.qparams import qparams_from_range
from qcompile.quant.relu6_grid import widen_relu6_grids


def range_qparams(q: QuantAnnotation) -> QParams:
    """The grid of an observed value's own range: its clip where a pass chose one, else what calibration saw
    (before any grid is shared or widened)."""
    lo, hi = (torch.as_tensor(q.clip[0]), torch.as_tensor(q.clip[1])) if q.clip else (q.stats.lo, q.stats.hi)
    spec = replace(q.observer, bits=q.bits) if q.bits is not None and q.bits < 8 else q.observer
    return qparams_from_range(lo, hi, spec)


def choose_qparams(graph: Graph) -> int:
    """Fill ``qparams`` / ``weight_qparams`` from statistics, clip ranges and shared grids (a cat's inputs on
    its grid, :mod:`qcompile.quant.cat_grids`); returns the number of cats that copy codes."""
    for node in graph.nodes():
        q = node.quant
        if q.channel_bits is not None:
            raise QCompileError(
                f"%{node.name} has per-channel activation bit widths, which integer kernels cannot mix "
                "along a reduction", hint="use simulate for per-channel activation bits")
        if q.clip is not None and torch.as_tensor(q.clip[0]).numel() > 1:
            raise QCompileError(
                f"%{node.name} has one clip range per channel, which integer kernels cannot apply "
                "(they need one scale per tensor)", hint="drop per-channel=true from aciq, or use simulate")
        if q.observer is not None and (q.clip is not None or q.stats is not None):
            q.qparams = range_qparams(q)
        if q.weight_stats is not None:
            spec = q.weight_observer
            q.weight_qparams = qparams_from_range(q.weight_stats.lo, q.weight_stats.hi, spec,
                                                  spec.axis if spec.per_channel else None)
        if q.mode == "static" and node.op in FIXED and q.stats is None:
            scale, zero_point = FIXED[node.op]
            q.qparams = QParams(torch.tensor(scale), torch.tensor(zero_point), "uint8", 0, 255)
    cats = share_cat_grids(graph)
    for node in graph.nodes():
        if node.quant.shares is not None:
            owner = graph.node(node.quant.shares)
            node.quant.qparams = owner.quant.qparams
    return cats


def decide_grids(graph: Graph, convert: Convert) -> dict[str, int]:
    """Every grid ``convert`` will use, decided on ``graph``'s annotations: qparams, weight bits, ReLU6 grids.

    Passes that must know the integer model's exact weight grid before
    ``convert`` runs (``adaround``) call this on a copy of the graph.
    """
    cats = choose_qparams(graph)
    counts: dict[str, int] = {"cats on their inputs' grid": cats} if cats else {}
    _check_eight_bit(graph, convert)
    if convert.weight_bits < 8:
        for node in graph.nodes():
            q = node.quant
            if any(matches_pattern(node, pattern) for pattern in convert.eight_bit):
                continue
            if q.weight_stats is not None and q.weight_bits is None:
                q.weight_bits = torch.full((graph.param(node, "weight").shape[0],), convert.weight_bits)
    if convert.relu6_grid == "full" and "qat-prepared" not in graph.facts:  # QAT learned its grids and weights
        widened, readers = widen_relu6_grids(graph)
        if widened:
            counts.update({"relu6 grids widened": len(widened), "7-bit weights for wide inputs": len(readers)})
    return counts


def _check_eight_bit(graph: Graph, convert: Convert) -> None:
    """Refuse ``eight-bit`` without ``weight-bits`` below 8, and a pattern that names no layer with weights
    (quantized or kept float)."""
    if not convert.eight_bit:
        return
    if convert.weight_bits == 8:
        raise QCompileError("convert{eight-bit=...} keeps layers at 8-bit weights, but every weight has 8 bits "
                            "already", hint="add weight-bits=N (2-7) for the other layers")
    weighted = [n for n in graph.nodes() if "weight" in n.params]
    for pattern in convert.eight_bit:
        if not any(matches_pattern(n, pattern) for n in weighted):
            names = ", ".join(n.name for n in weighted[:6]) + (", ..." if len(weighted) > 6 else "")
            raise QCompileError(f"convert{{eight-bit}}: {pattern!r} names no layer with weights",
                                hint=f"layers: {names} (node or module path globs, or op:conv2d)")


def require_scales(graph: Graph) -> None:
    """Refuse a graph with a statically quantized value that got no grid."""
    for node in graph.nodes():
        if node.quant.mode == "static" and node.quant.qparams is None and node.op not in SPLITS | {"getitem"}:
            raise QCompileError(f"%{node.name} ({node.op}) has no scale: was it observed and calibrated?")


@register_pass
@dataclass(frozen=True)
class Convert(Pass):
    """Choose qparams and rewrite the quantized region onto integer kernels."""

    name = "convert"
    requires = ("calibrated",)
    provides = ("converted", STATICALLY_CONVERTED)
    forbids = FLOAT_GRAPH_ONLY

    backend: Literal["auto", "native", "gemmlowp"] = AUTO
    weight_bits: int = option(8, low=2, high=8)
    relu6_grid: Literal["full", "observed"] = "full"
    eight_bit: tuple[str, ...] = ()

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if "converted" in graph.facts:
            return PassResult(False)
        backend = choose_backend(graph, ctx.log) if self.backend == AUTO else self.backend  # observe chose, where it ran
        chosen = {f"backend auto -> {backend}": 1} if self.backend == AUTO else {}
        graph.attrs.update(backend=backend)
        if backend == "gemmlowp":  # the integer stage, then its kernels: never torch's quantized modules
            from qcompile.passes.integerize import integerize

            from qcompile.backends.gemmlowp import lower_to_gemmlowp

            counts = integerize(graph, self)
            lower_to_gemmlowp(graph)
            return PassResult(True, chosen | counts)
        counts = chosen | decide_grids(graph, self)
        require_scales(graph)
        engine = ctx.quant_config.engine
        if engine not in torch.backends.quantized.supported_engines:
            raise QCompileError(f"quantized engine {engine!r} is not available in this torch build",
                                hint=f"available: {', '.join(torch.backends.quantized.supported_engines)}")
        torch.backends.quantized.engine = engine  # weights are packed for this engine
        graph.attrs.update(engine=engine)
        for node in graph.nodes():
            if node.op == "dequantize":
                convert_dequantize(node)
                counts["dequantize"] = counts.get("dequantize", 0) + 1
                continue
            if node.quant.mode != "static":
                continue
            rule = RULES.get(node.op)
            if rule is not None:
                rule(graph, node)
                counts[node.op] = counts.get(node.op, 0) + 1
            if node.quant.bits is not None and node.quant.bits < 8 and node.quant.observer is not None:
                clamp_to_bits(graph, node)
        for node in graph.nodes():  # including the clamps the rules added
            if node.quant.mode == "static" and isinstance(node.type, TensorType) and node.quant.qparams is not None:
                node.type = replace(node.type, dtype="qu8" if node.quant.qparams.dtype == "uint8" else "qi8")
        rewritten = views_after_dequantize(graph)  # torch's DeQuantize keeps the channels-last layout
        if rewritten:
            counts["float views as reshape"] = rewritten
        return PassResult(True, counts)



