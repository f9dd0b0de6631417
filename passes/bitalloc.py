"""``bitalloc``: per-channel bit widths for weights (and activations) under a budget.

requires: ``calibrated``    provides: ``bits-allocated``

Each output channel of each conv/linear weight gets ``M_i`` bits with
``2^M_i`` proportional to ``std_i^(2/3)`` (paper eq. 10/11), the mean over the
layer's channels at most ``budget`` (a float: 4 or 5.3). Channels may get 0
bits (they become a constant). With ``activations=true`` the channels of each
observed activation are allocated too, from their standard deviation (or
mean absolute deviation, ``prior=laplace``); mixed bit widths along a
reduction need the ``simulate`` pass. The allocation prints on the graph::

    %conv1 = conv2d(...)  # ... | weight: ... bits=[64 channels, 2..6, mean 4.00]

Options:
    budget: Average bits per channel.
    weights: Allocate weight bits.
    activations: Allocate activation bits (simulate only).
    prior: ``gauss`` (std) or ``laplace`` (mean absolute deviation) for activations.
    max_bits: Upper bound per channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from qcompile.errors import QCompileError
from qcompile.ir.graph import Graph
from qcompile.ir.node import NodeKind
from qcompile.pipeline import FLOAT_GRAPH_ONLY, Pass, PassContext, PassResult, option, register_pass
from qcompile.quant.bit_allocation import allocate_bits
from qcompile.quant.op_table import TRANSPOSED


@register_pass
@dataclass(frozen=True)
class Bitalloc(Pass):
    """Allocate per-channel bit widths under an average-bits budget (eq. 10/11)."""

    name = "bitalloc"
    requires = ("calibrated",)
    provides = ("bits-allocated",)
    forbids = FLOAT_GRAPH_ONLY
    needs_statistics = ("moments",)

    budget: float = option(4.0, above=0, high=8)
    weights: bool = True
    activations: bool = False
    prior: Literal["gauss", "laplace"] = "gauss"
    max_bits: int = option(8, low=1, high=8)

    def validate(self) -> None:
        if not 0 < self.budget <= self.max_bits <= 8:
            raise ValueError(f"need 0 < budget <= max-bits <= 8, got budget={self.budget} max-bits={self.max_bits}")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        layers = channels = 0
        for node in graph.find(kind=NodeKind.MODULE):
            if self.weights and node.quant.weight_observer is not None and node.op in TRANSPOSED:
                ctx.explain(f"%{node.name} ({node.op}) keeps 8-bit weights: torch's int8 transposed convolutions take "
                            "one scale per tensor, not bits per channel")
            elif self.weights and node.quant.weight_observer is not None:
                weight = graph.param(node, "weight").detach().float()
                std = weight.reshape(weight.shape[0], -1).std(dim=1)
                bits = allocate_bits(std, self.budget, self.max_bits)
                if node.quant.weight_bits is None or not bool((bits == node.quant.weight_bits).all()):
                    node.quant.weight_bits = bits
                    layers, channels = layers + 1, channels + len(bits)
        if self.activations:
            for node in graph.nodes():
                stats = node.quant.stats
                if stats is None:
                    continue
                per_channel = stats.moments.channels if stats.moments is not None else None
                if per_channel is None:
                    raise QCompileError(f"%{node.name} has no per-channel moments",
                                        hint="calibrate again with bitalloc in the pipeline")
                spread = per_channel.std if self.prior == "gauss" else per_channel.mad
                bits = allocate_bits(spread, self.budget, self.max_bits)
                if node.quant.channel_bits is None or not bool((bits == node.quant.channel_bits).all()):
                    node.quant.channel_bits = bits
                    layers, channels = layers + 1, channels + len(bits)
        return PassResult(layers > 0, {"tensors": layers, "channels": channels})
