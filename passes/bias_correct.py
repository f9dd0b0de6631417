"""``bias-correct``: empirical bias correction (Nagel et al. 2019), layer by layer on calibration data.

requires: ``calibrated``    provides: ``bias-corrected``

Quantizing a layer's weights shifts the expected value of each of its output
channels; the shifts add up along the network. This pass measures the shift
and folds it into the layer's bias (spec section 4.4)::

    b_c  <-  b_c - mean_{n,h,w}(y~_c - y_c)

``y`` is the layer's output in the float graph, ``y~`` its output in a twin
of the graph quantized the way the next ``simulate`` or ``convert`` pass will
quantize it (for ``convert``: torch.ao's grids, emulated in float), both
before any fused activation and on the same samples. Layers are corrected in
order, each with every earlier layer already corrected: the twin runs once
on all samples, and each layer's output is corrected while later layers
have still to run, which is the same as one run per layer.

Unlike Banner's weight correction (``simulate{bias-correct=mean}``, which
needs no data) this needs data, but it sees each input channel's real mean
and the error that upstream layers pass on, and the weights stay on their
grid, so it works for integer models too::

    bias-correct,convert{weight-bits=4}

Layers without a bias are left alone (and counted). Calibration ranges are
not recomputed after the shift.

Options:
    samples: Calibration samples to measure on, run as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from qcompile.passes.convert import choose_qparams
from qcompile.passes.simulate import Simulate

from qcompile.errors import QCompileError
from qcompile.interpreter import Interpreter
from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind
from qcompile.ir.quant_types import QParams
from qcompile.pipeline import Pass, PassContext, PassResult, register_pass
from qcompile.quant.op_table import WEIGHTED


def channel_means(node: Node, value: torch.Tensor) -> torch.Tensor:
    """Mean of each output channel: axis 1 for convs, the last axis for linear layers."""
    axis = value.dim() - 1 if node.op == "linear" else 1
    return value.detach().float().transpose(0, axis).reshape(value.shape[axis], -1).mean(dim=1)


def _grid_range(qparams: QParams) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(lo, hi, bits)`` whose fake-quantization grid is exactly ``qparams``' grid."""
    scale, zero = qparams.scale.double(), qparams.zero_point.double()
    lo, hi = (qparams.quant_min - zero) * scale, (qparams.quant_max - zero) * scale
    return lo.float(), hi.float(), (qparams.quant_max - qparams.quant_min + 1).bit_length() - 1


def _weight_grid(graph: Graph, node: Node, weight_bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The grid ``convert`` puts the weights on (see ``quantize_weight_bits``), as a range and bits."""
    q = node.quant
    channels = graph.param(node, "weight").shape[0]
    if q.weight_bits is None and weight_bits == 8:
        lo, hi, bits = _grid_range(q.weight_qparams)
        return lo, hi, torch.full((channels,), float(bits))
    bits = (q.weight_bits if q.weight_bits is not None else torch.full((channels,), weight_bits)).double()
    lo, hi = q.weight_stats.lo.double(), q.weight_stats.hi.double()
    magnitude = torch.maximum(-lo.clamp(max=0), hi.clamp(min=0))
    scale = (magnitude / ((2.0**bits - 1) / 2).clamp(min=0.5)).clamp(min=torch.finfo(torch.float32).eps)
    half = torch.where(bits > 0, 2.0 ** (bits - 1), torch.zeros_like(bits))
    return (-half * scale).float(), ((half - 1).clamp(min=0) * scale).float(), bits.float()


def quantized_twin(graph: Graph, target: Pass, ctx: PassContext) -> Graph:
    """A float copy of ``graph`` that computes what ``target`` (simulate or convert) will make of it."""
    twin = graph.copy()
    if target.name == "simulate":
        target.run(twin, ctx)
        return twin
    choose_qparams(twin)
    for node in twin.nodes():
        q = node.quant
        if q.qparams is not None and q.observer is not None:
            lo, hi, bits = _grid_range(q.qparams)
            q.clip, q.bits = (lo, hi), bits
        if q.weight_stats is not None and node.kind == NodeKind.MODULE:
            lo, hi, bits = _weight_grid(twin, node, target.weight_bits)
            q.weight_stats, q.weight_bits = replace(q.weight_stats, lo=lo, hi=hi), bits
    Simulate().run(twin, ctx)
    return twin


def _samples(ctx: PassContext, count: int) -> tuple[torch.Tensor, ...]:
    if ctx.calib_data is None:
        raise QCompileError("'bias-correct' needs calibration data", hint="pass --calib DATA")
    parts: list[tuple] = []
    seen = 0
    for batch in ctx.calib_data:
        batch = batch if isinstance(batch, (tuple, list)) else (batch,)
        parts.append(tuple(batch))
        seen += len(batch[0])
        if seen >= count:
            break
    if not parts:
        raise QCompileError("the calibration data is empty", hint="check the --calib path and --calib-samples")
    return tuple(torch.cat(column)[:count] for column in zip(*parts, strict=True))


@register_pass
@dataclass(frozen=True)
class BiasCorrect(Pass):
    """Fold each layer's measured quantization shift into its bias (Nagel et al., empirical)."""

    name = "bias-correct"
    requires = ("calibrated",)
    provides = ("bias-corrected",)

    samples: int = 64

    def __post_init__(self):
        if self.samples < 1:
            raise ValueError(f"samples must be at least 1, got {self.samples}")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if "bias-corrected" in graph.facts:
            return PassResult(False)
        target = next((p for p in ctx.remaining_passes if p.name in ("simulate", "convert")), None)
        if target is None:
            raise QCompileError("'bias-correct' corrects for the quantization that a later simulate or "
                                "convert pass applies, and none follows it",
                                hint="put it before simulate or convert, e.g. fuse,calibrate,bias-correct,convert")
        layers = [n for n in graph.nodes() if n.kind == NodeKind.MODULE and n.op in WEIGHTED
                  and n.quant.weight_stats is not None]
        biased = {n.name: n for n in layers if "bias" in n.params}
        inputs = _samples(ctx, self.samples)
        float_means: dict[str, torch.Tensor] = {}

        def measure(node, value):
            if node.name in biased:
                float_means[node.name] = channel_means(node, value)

        Interpreter(graph).run(*inputs, edit=measure)
        shifts: dict[str, torch.Tensor] = {}

        def correct(node, value):
            if node.name not in biased:
                return None
            shift = channel_means(node, value) - float_means[node.name]
            shifts[node.name] = shift
            axis = value.dim() - 1 if node.op == "linear" else 1
            shape = [1] * value.dim()
            shape[axis] = -1
            return value - shift.reshape(shape).to(value.dtype)

        twin = quantized_twin(graph, target, ctx)
        Interpreter(twin).run(*inputs, edit=correct)
        for name, shift in shifts.items():
            key = biased[name].params["bias"]
            bias = graph.params[key]
            graph.params[key] = (bias.detach() - shift.to(bias.dtype)).requires_grad_(bias.requires_grad)
        largest = max((float(s.abs().max()) for s in shifts.values()), default=0.0)
        return PassResult(bool(shifts), {"layers": len(shifts), "without bias": len(layers) - len(biased),
                                         "largest shift": round(largest, 6)})
