"""``simulate``: fake quantization in float, the paper's research mode.

requires: ``calibrated``    provides: ``simulated``

Every observed activation gets a ``fake_quantize`` node and every conv/linear
weight is replaced by its quantized-dequantized values, on the reference
repository's grid (``2^M - 1`` steps over the range, see
:mod:`qcompile.quant.fake`). Unlike ``convert`` this allows what integer
kernels cannot: per-channel activation bit widths from ``bitalloc``, any
width from 0 to 8 bits, analytic clips from ``aciq``. The result runs in the
interpreter and emits as ordinary PyTorch code::

    %conv1 = conv2d(...) : f32[1,64,112,112]
    %conv1_fq = fake_quantize(%conv1, %conv1_lo, %conv1_hi, %conv1_bits, axis=1) : f32[1,64,112,112]

Options:
    bits: Activation bits where no pass chose any.
    weight_bits: Weight bits where ``bitalloc`` did not allocate them.
    bias_correct: Banner's weight correction after quantization (spec 4.2):
        ``mean`` restores each output channel's float mean, ``mean-std`` also
        its standard deviation (the corrected weights leave the grid, which
        simulation allows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind, Ref
from qcompile.pipeline import FLOAT_GRAPH_ONLY, Pass, PassContext, PassResult, option, register_pass
from qcompile.quant.fake import fake_quantize

FAKE_QUANTIZE = "qcompile.quant.fake.fake_quantize"


def correct_weights(weight: torch.Tensor, quantized: torch.Tensor, variance: bool) -> torch.Tensor:
    """Per output channel: the quantized weights' mean (and std) set back to the float ones."""
    w = weight.reshape(weight.shape[0], -1)
    q = quantized.reshape(quantized.shape[0], -1)
    q_mean = q.mean(dim=1, keepdim=True)
    if variance:
        q = (q - q_mean) * (w.std(dim=1, keepdim=True) / (q.std(dim=1, keepdim=True) + 1e-8)) + q_mean
    return (q - q_mean + w.mean(dim=1, keepdim=True)).reshape(weight.shape)


def _param_node(graph: Graph, owner: Node, suffix: str, value: torch.Tensor, after: Node) -> Node:
    name = graph.add_param(f"{owner.source.module_path or owner.name}.{suffix}", value)
    return graph.add_node("param", NodeKind.PARAM, name=f"{owner.name}_{suffix}", target=name,
                          after=after, source=owner.source)


@register_pass
@dataclass(frozen=True)
class Simulate(Pass):
    """Fake-quantize activations and weights in float (any bits, per-channel bits, analytic clips)."""

    name = "simulate"
    requires = ("calibrated",)
    provides = ("simulated",)
    forbids = FLOAT_GRAPH_ONLY

    bits: int = option(8, low=1, high=8)
    weight_bits: int = option(8, low=1, high=8)
    bias_correct: Literal["none", "mean", "mean-std"] = "none"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if "simulated" in graph.facts:
            return PassResult(False)
        activations = weights = 0
        for node in graph.nodes():
            q = node.quant
            if q.weight_stats is not None and node.kind == NodeKind.MODULE:
                bits = q.weight_bits if q.weight_bits is not None else torch.tensor(self.weight_bits)
                weight = graph.param(node, "weight")
                lo, hi = q.weight_stats.lo, q.weight_stats.hi
                quantized = fake_quantize(weight.detach(), lo, hi, bits, axis=0)
                if self.bias_correct != "none":
                    quantized = correct_weights(weight.detach(), quantized, self.bias_correct == "mean-std")
                graph.params[node.params["weight"]] = quantized
                weights += 1
            if q.stats is None or q.observer is None:
                continue
            lo, hi = (q.clip if q.clip is not None else (q.stats.lo, q.stats.hi))
            lo, hi = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
            if q.channel_bits is not None:
                bits = q.channel_bits.float()
                lo, hi = lo.expand(len(bits)).clone(), hi.expand(len(bits)).clone()
            else:
                bits = torch.tensor(float(q.bits if q.bits is not None else self.bits))
            uses = graph.uses(node)
            lo_node = _param_node(graph, node, "fq_lo", lo, node)
            hi_node = _param_node(graph, node, "fq_hi", hi, lo_node)
            bits_node = _param_node(graph, node, "fq_bits", bits, hi_node)
            fq = graph.add_node("fake_quantize", NodeKind.FUNCTION, [node, lo_node, hi_node, bits_node],
                                name=f"{node.name}_fq", target=FAKE_QUANTIZE,
                                args=(Ref(0), Ref(1), Ref(2), Ref(3)), kwargs={"axis": 1},
                                type=node.type, source=node.source, after=bits_node)
            for user, port in uses:
                graph.set_input(user, port, fq)
            activations += 1
        return PassResult(bool(activations or weights), {"activations": activations, "weights": weights})
