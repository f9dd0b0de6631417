"""Quantization emulated in float: a twin of a calibrated graph that computes what a later pass will.

``simulate`` is its own emulation; for ``convert`` the twin puts every
activation and weight on exactly the grid PyTorch's qparams give (as a
``fake_quantize`` range with the same step and zero point), so the twin
differs from the integer model only in the integer arithmetic (rounding of
the requantization). Bias correction measures shifts on it, and the
sensitivity analysis switches single layers on and off in it.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind
from qcompile.ir.quant_types import QParams
from qcompile.pipeline import Pass, PassContext


def quantizable_layers(graph: Graph) -> list[Node]:
    """Nodes whose output or weight a quantizing pass will put on a grid, in graph order."""
    return [n for n in graph.nodes() if n.quant.observer is not None or n.quant.weight_stats is not None]


def grid_range(qparams: QParams) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(lo, hi, bits)`` whose fake-quantization grid is exactly ``qparams``' grid."""
    scale, zero = qparams.scale.double(), qparams.zero_point.double()
    lo, hi = (qparams.quant_min - zero) * scale, (qparams.quant_max - zero) * scale
    return lo.float(), hi.float(), (qparams.quant_max - qparams.quant_min + 1).bit_length() - 1


def _weight_grid(graph: Graph, node: Node, weight_bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The grid ``convert`` puts the weights on (see :func:`qcompile.quant.integer_weights.integer_weight`), as a range and bits."""
    q = node.quant
    channels = graph.param(node, "weight").shape[0]
    if q.weight_bits is None and weight_bits == 8:
        lo, hi, bits = grid_range(q.weight_qparams)
        return lo, hi, torch.full((channels,), float(bits))
    bits = (q.weight_bits if q.weight_bits is not None else torch.full((channels,), weight_bits)).double()
    lo, hi = q.weight_stats.lo.double(), q.weight_stats.hi.double()
    magnitude = torch.maximum(-lo.clamp(max=0), hi.clamp(min=0))
    scale = (magnitude / ((2.0**bits - 1) / 2).clamp(min=0.5)).clamp(min=torch.finfo(torch.float32).eps)
    half = torch.where(bits > 0, 2.0 ** (bits - 1), torch.zeros_like(bits))
    return (-half * scale).float(), ((half - 1).clamp(min=0) * scale).float(), bits.float()


def quantized_twin(graph: Graph, target: Pass, ctx: PassContext, layers: set[str] | None = None) -> Graph:
    """A float copy of ``graph`` that computes what ``target`` (simulate or convert) will make of it.

    With ``layers``, only those nodes are quantized (their output and their
    weight); every other node stays float. Layers are the nodes that carry
    an observer or weight statistics (:func:`quantizable_layers`).
    """
    twin = graph.copy()
    if layers is not None:
        for node in twin.nodes():
            if node.name not in layers:
                node.quant.observer = node.quant.weight_stats = None
    if target.name == "simulate":
        target.run(twin, ctx)
        return twin
    from qcompile.passes.convert import decide_grids
    from qcompile.passes.simulate import Simulate

    decide_grids(twin, target)  # every grid convert will choose: qparams, weight bits, widened ReLU6 grids
    for node in twin.nodes():
        q = node.quant
        if q.qparams is not None and q.observer is not None:
            lo, hi, bits = grid_range(q.qparams)
            q.clip, q.bits = (lo, hi), bits
        if q.weight_stats is not None and node.kind == NodeKind.MODULE:
            lo, hi, bits = _weight_grid(twin, node, target.weight_bits)
            q.weight_stats, q.weight_bits = replace(q.weight_stats, lo=lo, hi=hi), bits
    Simulate().run(twin, ctx)
    return twin
