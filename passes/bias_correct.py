"""``bias-correct``: empirical bias correction (Nagel et al. 2019), layer by layer on calibration data.

requires: ``calibrated``    provides: ``bias-corrected``

Quantizing a layer's weights shifts the expected value of each of its output
channels; the shifts add up along the network. This pass measures the shift
and folds it into the layer's bias (spec section 4.4)::

    b_c  <-  b_c - mean_{n,h,w}(y~_c - y_c)

``y`` is the layer's output in the float graph, ``y~`` its output in a twin
of the graph quantized the way the next ``simulate`` or ``convert`` pass will
quantize it (for ``convert``: the integer grids, emulated in float), both
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

Under ``torchrun`` the samples are split over the processes; each layer's
channel means are summed over them (one all-reduce per layer and run), so
every process applies the same correction, equal to one process's within
float rounding.

Options:
    samples: Calibration samples to measure on, run as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcompile.data import calibration_samples
from qcompile.distributed import World
from qcompile.distributed.shards import my_samples
from qcompile.errors import QCompileError
from qcompile.interpreter import Interpreter
from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind
from qcompile.pipeline import (
    FLOAT_GRAPH_ONLY,
    SIMULATED,
    STATICALLY_CONVERTED,
    Pass,
    PassContext,
    PassResult,
    first_providing,
    option,
    register_pass,
)
from qcompile.quant.emulate import quantized_twin
from qcompile.quant.op_table import WEIGHTED


def channel_axis(node: Node, value: torch.Tensor) -> int:
    """Where a layer's output channels are: axis 1 for convs, the last axis for linear layers."""
    return value.dim() - 1 if node.op == "linear" else 1


def channel_means(node: Node, value: torch.Tensor, world: World | None = None) -> torch.Tensor:
    """Mean of each output channel (over the samples of every rank, given the run's ``world``)."""
    axis = channel_axis(node, value)
    per_channel = value.detach().float().transpose(0, axis).reshape(value.shape[axis], -1)
    if world is None or not world.distributed:
        return per_channel.mean(dim=1)
    sums = world.all_reduce(torch.cat([per_channel.double().sum(dim=1), per_channel.new_tensor([per_channel.shape[1]],
                                                                                              dtype=torch.float64)]))
    return (sums[:-1] / sums[-1]).float()


@register_pass
@dataclass(frozen=True)
class BiasCorrect(Pass):
    """Fold each layer's measured quantization shift into its bias (Nagel et al., empirical)."""

    name = "bias-correct"
    requires = ("calibrated",)
    provides = ("bias-corrected",)
    forbids = FLOAT_GRAPH_ONLY

    samples: int = option(64, low=1)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if "bias-corrected" in graph.facts:
            return PassResult(False)
        target = first_providing(ctx.remaining_passes, SIMULATED, STATICALLY_CONVERTED)
        if target is None:
            raise QCompileError("'bias-correct' corrects for the quantization that a later simulate or "
                                "convert pass applies, and none follows it",
                                hint="put it before simulate or convert, e.g. fuse,calibrate,bias-correct,convert")
        layers = [n for n in graph.nodes() if n.kind == NodeKind.MODULE and n.op in WEIGHTED
                  and n.quant.weight_stats is not None]
        biased = {n.name: n for n in layers if "bias" in n.params}
        inputs = my_samples(calibration_samples(ctx.calib_data, self.samples, self.name), ctx.world)
        float_means: dict[str, torch.Tensor] = {}

        def measure(node, value):
            if node.name in biased:
                float_means[node.name] = channel_means(node, value, ctx.world)

        Interpreter(graph).run(*inputs, edit=measure)
        shifts: dict[str, torch.Tensor] = {}

        def correct(node, value):
            if node.name not in biased:
                return None
            shift = channel_means(node, value, ctx.world) - float_means[node.name]
            shifts[node.name] = shift
            shape = [1] * value.dim()
            shape[channel_axis(node, value)] = -1
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
