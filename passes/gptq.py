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
default) the pass also rounds the weight mapped so that the quantized
inputs give the float layer's outputs (:func:`qcompile.quant.gptq.compensated_weight`),
which makes up for what the earlier layers' quantization did to the input,
as ``adaround``'s reconstruction against float outputs does; the mapping
also fits its sample's noise where rows are few for the layer's width, so
both are rounded on three quarters of the rows and the one with the lower
output error on the last quarter is kept (and rounded again on all rows).
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
    float_inputs: Also round the weight mapped onto the quantized inputs, and keep it where it does better on
        held-back rows (needs the float model's inputs at the same rows, a second set of activations in
        memory; with ``positions=0`` only linear layers on 2-d inputs try it); false rounds the float weight
        itself.

Layers other than ``Linear`` and zero-padded ``Conv2d`` (conv1d, conv3d,
string padding) keep round-to-nearest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcompile.ir.graph import Graph
from qcompile.pipeline import FLOAT_GRAPH_ONLY, Pass, PassContext, PassResult, option, register_pass
from qcompile.quant.adaround import reconstruction_error
from qcompile.quant.gptq import compensated_weight, gptq_codes, hessians, moments
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

        mapped_layers: list[str] = []

        def solve(layer: Layer) -> torch.Tensor:
            rows, module = layer.rows, layer.module
            inputs = _rows_of(module, rows.inputs)
            if inputs is None:
                return layer.grid.codes(layer.weight)
            count = len(inputs)
            if not self.float_inputs or count < 8 or len(rows.inputs) != count:
                return gptq_codes(layer.weight, layer.grid, hessians(inputs), damp=self.damp)
            # both ways on three quarters of the rows, judged on the quarter they did not see: the mapping
            # fits its inputs' noise where rows are few for the layer's width
            float_inputs = _rows_of(module, layer.float_inputs)
            cut = count - count // 4
            (h_fit, cross_fit), (h_held, cross_held) = [(moments(inputs[part]), moments(float_inputs[part], inputs[part]))
                                                        for part in (slice(0, cut), slice(cut, count))]
            whole = [(a * cut + b * (count - cut)) / count for a, b in ((h_fit, h_held), (cross_fit, cross_held))]

            def rounded(h: torch.Tensor, cross: torch.Tensor, mapped: bool) -> torch.Tensor:
                weight = compensated_weight(layer.weight, h, cross, self.damp) if mapped else layer.weight
                return gptq_codes(weight, layer.grid, h, damp=self.damp)

            held = slice(cut, count)
            errors = [float(reconstruction_error(rows.layer(rows.inputs[held],
                                                            layer.grid.values(rounded(h_fit, cross_fit, m))),
                                                 rows.targets[held])) for m in (False, True)]
            mapped = errors[1] < errors[0]
            if mapped:
                mapped_layers.append(layer.node.name)
            return rounded(*whole, mapped)

        walked = walk_layers(graph, ctx, self, target, solve, samples=self.samples, positions=self.positions,
                             seed=self.seed, float_inputs=self.float_inputs)
        stats = walked.stats()
        if self.float_inputs:
            stats["weights mapped onto quantized inputs"] = f"{len(mapped_layers)} layers"
        return PassResult(walked.rounded > 0, stats)


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
