"""``gptq``: round each layer's weights against its input statistics, in seconds (GPTQ / exhaustive).

requires: ``calibrated``    provides: ``adarounded``

For every conv and linear layer that the following ``convert`` quantizes,
in graph order, on ``samples`` calibration samples: ``positions`` of the
layer's input rows in the quantized model (receptive-field patches of a
convolution, with the earlier layers already rounded), their second
moments ``H = X^T X / n`` per group, and then the codes that minimise the
output error ``(w - q) H (w - q)^T`` channel by channel
(:mod:`qcompile.quant.gptq`): every floor / ceiling choice where a channel
has at most ten weights (a 3x3 depthwise filter), GPTQ's column-by-column
rounding with error feedback elsewhere. With ``float-inputs`` (the
default) the weight rounded is first mapped so that the quantized inputs
give the float layer's outputs (:func:`qcompile.quant.gptq.compensated_weight`),
so the rounding also makes up for what the earlier layers' quantization did
to the input, as ``adaround``'s reconstruction against float outputs does.
No optimizer runs, so the pass
takes seconds where ``adaround`` takes minutes; a layer whose output error
(fused activation included, against the float model's output) the codes do
not lower keeps round-to-nearest. The walk and the write-back are
``adaround``'s (:func:`qcompile.quant.layer_walk.walk_layers`), so the two
are alternatives (both provide ``adarounded``), and ``convert`` turns the
written weight into exactly the chosen codes, at any ``weight-bits``::

    %conv1 = conv2d(%quantize_x, $conv1.{weight,bias}) ...  # $conv1.weight: float
    %conv1 = conv2d(%quantize_x, $conv1.{weight,bias}) ...  # $conv1.weight: on convert's grid, rounded by GPTQ

Put it after calibration and before ``convert``::

    fuse,equalize,calibrate,gptq,convert

Deterministic for a given ``seed`` (which positions are drawn).

Options:
    samples: Calibration samples whose activations give each layer's input statistics.
    positions: Input rows (output positions) per layer drawn from all the samples (0: every position of
        every sample, for small models).
    damp: Added to the diagonal of ``H``, as a share of its mean (keeps the inverse finite where inputs are
        always zero or repeat).
    seed: Seed of the positions drawn.
    float_inputs: Map the weight onto the quantized inputs first (needs the float model's inputs at the same
        rows, a second set of activations in memory); false rounds the float weight itself.

Layers other than ``Linear`` and zero-padded ``Conv2d`` (conv1d, conv3d,
string padding) keep round-to-nearest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcompile.ir.graph import Graph
from qcompile.pipeline import FLOAT_GRAPH_ONLY, Pass, PassContext, PassResult, option, register_pass
from qcompile.quant.gptq import compensated_weight, gptq_codes, hessians
from qcompile.quant.layer_walk import Layer, following_convert, walk_layers


@register_pass
@dataclass(frozen=True)
class GPTQ(Pass):
    """Round each layer's weights to minimise its output error on its inputs' second moments."""

    name = "gptq"
    requires = ("calibrated",)
    provides = ("adarounded",)
    forbids = FLOAT_GRAPH_ONLY

    samples: int = option(128, low=1)
    positions: int = option(16384, low=0)
    damp: float = option(0.01, above=0)
    seed: int = option(0, low=0)
    float_inputs: bool = option(True)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if "adarounded" in graph.facts:
            return PassResult(False)
        target = following_convert(ctx, self.name)

        def solve(layer: Layer) -> torch.Tensor:
            inputs = _rows_of(layer.module, layer.rows.inputs)
            if inputs is None:
                return layer.grid.codes(layer.weight)
            weight = layer.weight
            if self.float_inputs:
                weight = compensated_weight(weight, inputs, _rows_of(layer.module, layer.float_inputs), self.damp)
            return gptq_codes(weight, layer.grid, hessians(inputs), damp=self.damp)

        walked = walk_layers(graph, ctx, self, target, solve, samples=self.samples, positions=self.positions,
                             seed=self.seed, float_inputs=self.float_inputs)
        return PassResult(walked.rounded > 0, walked.stats())


def _rows_of(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The layer's input rows, ``(rows, K)`` or ``(rows, groups, K)``: as drawn, or every row of whole samples
    (``positions=0``); None for a layer whose patches are not cut here (conv1d, conv3d, string padding)."""
    if isinstance(module, torch.nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if not isinstance(module, torch.nn.Conv2d) or isinstance(module.padding, str) or module.padding_mode != "zeros":
        return None
    if x.dim() == 3:  # drawn positions: (rows, groups, K) already
        return x
    patches = torch.nn.functional.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding,
                                         stride=module.stride)  # (N, C * kh * kw, L)
    return patches.transpose(1, 2).reshape(-1, module.groups, patches.shape[1] // module.groups)
