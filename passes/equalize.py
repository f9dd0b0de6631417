"""``equalize``: cross-layer equalization and high-bias absorption, data-free (Nagel et al. 2019).

requires: ``fused``    provides: ``equalized``    (before any calibration)

Every pair of convolutions (or linear layers) where the first feeds only the
second, through its fused ReLU, ReLU6 or no activation, is rescaled channel
by channel so that the first layer's output channel ``i`` and the second
layer's input channel ``i`` end with the same weight range
(:mod:`qcompile.quant.equalization`). The float function is unchanged, and
grids fit every channel better. Chains (a MobileNet block's expand,
depthwise and project convolutions) are swept until the scales settle. On
MobileNetV2, a depthwise layer and the projection after it (weight ranges
over the channels they share)::

    %features_2_conv_1_0 = conv2d(...) {act='relu6', groups=96, ...}  # output channels 0.193 .. 6.36
    %features_2_conv_2   = conv2d(...) ...                             # input channels  0.249 .. 0.755

    %features_2_conv_1_0 = conv2d(...) {act='relu6', groups=96, ...}  # output channels 0.336 .. 0.842
    %features_2_conv_2   = conv2d(...) ...                             # input channels  0.336 .. 0.842

With ``--debug`` every equalized layer's channel-range spread is listed
before and after, and every layer left alone says why.

A ReLU6 clamps at 6, and ``min(z / s, 6) = min(z, 6 s) / s``: after scaling,
its clamp would be ``6 / s_i``, one per channel, which no backend's output
stage has. ``relu6=prior`` (the default) keeps the ReLU6 and scales only the
channels that its folded BatchNorm (``Node.norm_prior``: shift and scale)
says stay below the clamp by ``margin`` standard deviations, and only as far
as they keep doing so; ``relu6=relu`` turns the ReLU6 into a ReLU first, as
Nagel et al. do for MobileNetV2, which changes the float model wherever the
clamp acted; ``relu6=keep`` leaves such pairs alone.

High-bias absorption (``absorb-bias=true``) then moves the part of a ReLU'd
channel's bias that its folded BatchNorm says the ReLU almost never cuts
(``mean - 3 std``) into the next layer's bias, where that layer pads
nothing. It is off by default: real channels fall below that bound more
often than a Gaussian would, and each time the float model changes.

Options:
    relu6: ``prior`` (scale below the clamp), ``relu`` (the ReLU6 becomes a
        ReLU) or ``keep`` (pairs through a ReLU6 stay as they are).
    absorb_bias: Move the part of a ReLU'd channel's bias that the ReLU almost
        never cuts into the next layer.
    margin: How many standard deviations of a folded BatchNorm's output,
        above its mean, must stay below a ReLU6's clamp (``relu6=prior``).
    layers: Only pairs whose first layer matches one of these patterns
        (node or module path globs, or ``op:conv2d``); empty for all.
    iterations: Most sweeps over the pairs; sweeping stops earlier once no
        scale moves by more than one part in a million.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import torch

from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind, Ref
from qcompile.pipeline import (
    CALIBRATED,
    FLOAT_GRAPH_ONLY,
    Pass,
    PassContext,
    PassResult,
    option,
    register_pass,
)
from qcompile.quant.config import matches_pattern
from qcompile.quant.equalization import (
    RELU6_CEILING,
    absorbable_shift,
    absorbed_bias,
    equalizing_scales,
    input_ranges,
    output_ranges,
    scale_inputs,
    scale_outputs,
    scales_below_clamp,
)

_LAYERS = {"conv1d", "conv2d", "conv3d", "linear"}
_TOLERANCE = 1e-6  # a sweep whose scales all lie within 1 +- this ends the sweeping


@dataclass
class _Pair:
    first: Node
    second: Node
    groups: int  # of the second layer


def _spread(ranges: torch.Tensor) -> float:
    """Widest over narrowest nonzero channel range: how much of a per-tensor grid the narrow channels waste."""
    live = ranges[ranges > 0]
    return float(live.max() / live.min()) if live.numel() else 1.0


def _packed(node: Node) -> bool:
    """A layer dynamic quantization already put on torch's packed int8 weights: nothing to rescale."""
    return node.quant.mode == "dynamic"


def _pads(node: Node) -> bool:
    padding = node.attrs.get("padding", 0)
    if isinstance(padding, str):
        return padding != "valid"
    return any(p != 0 for p in (padding if isinstance(padding, (tuple, list)) else (padding,)))


@register_pass
@dataclass(frozen=True)
class Equalize(Pass):
    """Rescale consecutive layers' channels to equal weight ranges: cross-layer equalization (data-free)."""

    name = "equalize"
    requires = ("fused",)
    provides = ("equalized",)
    forbids = FLOAT_GRAPH_ONLY + (CALIBRATED,)

    relu6: Literal["prior", "keep", "relu"] = "prior"
    absorb_bias: bool = False
    layers: tuple[str, ...] = ()
    margin: float = option(6.0, above=0)
    iterations: int = option(100, low=1, high=10000)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        pairs = self._pairs(graph, ctx)
        if not pairs:
            return PassResult(False, {"pairs": 0})
        # work in float64, write back once: hundreds of sweeps of float32 rescaling would drift
        weights = {n.name: graph.param(n, "weight").detach().double() for p in pairs for n in (p.first, p.second)}
        biases = {n.name: graph.param(n, "bias") for p in pairs for n in (p.first, p.second)}
        biases = {k: None if b is None else b.detach().double() for k, b in biases.items()}
        before = {k: _spread(output_ranges(w)) for k, w in weights.items()}
        priors = {p.first.name: tuple(t.double() for t in p.first.norm_prior) for p in pairs
                  if p.first.norm_prior is not None}
        sweeps = 0
        while sweeps < self.iterations:
            sweeps += 1
            if self._sweep(pairs, weights, biases, priors) < _TOLERANCE:
                break
        changed_act = 0
        for p in pairs:
            if p.first.act == "relu6" and self.relu6 == "relu":
                p.first.act = "relu"
                changed_act += 1
            if p.first.name in priors:
                p.first.norm_prior = tuple(t.float() for t in priors[p.first.name])
        absorbed = self._absorb(graph, pairs, weights, biases) if self.absorb_bias else 0
        for name, weight in weights.items():
            node = graph.node(name)
            original = graph.param(node, "weight")
            graph.params[node.params["weight"]] = weight.to(original.dtype)
            if biases[name] is not None:
                graph.params[node.params["bias"]] = biases[name].to(graph.param(node, "bias").dtype)
        after = {k: _spread(output_ranges(w)) for k, w in weights.items()}
        for name in weights:
            ctx.explain(f"%{name}: output-channel weight ranges spread {before[name]:.3g}x -> {after[name]:.3g}x")
        stats = {"pairs": len(pairs), "sweeps": sweeps,
                 "channel-range spread (median)": f"{_median(before):.3g}x -> {_median(after):.3g}x"}
        if changed_act:
            stats["relu6 became relu"] = changed_act
        if self.absorb_bias:
            stats["channels absorbed"] = absorbed
        return PassResult(True, stats)

    def _sweep(self, pairs: list[_Pair], weights: dict, biases: dict, priors: dict) -> float:
        """Equalize every pair once, in graph order; the largest ``|log s|`` applied."""
        largest = 0.0
        for p in pairs:
            w1, w2 = weights[p.first.name], weights[p.second.name]
            scales = equalizing_scales(output_ranges(w1), input_ranges(w2, p.groups))
            if p.first.act == "relu6" and self.relu6 == "prior":
                scales = scales_below_clamp(scales, *priors[p.first.name], RELU6_CEILING, self.margin)
            weights[p.first.name], biases[p.first.name] = scale_outputs(w1, biases[p.first.name], scales)
            weights[p.second.name] = scale_inputs(w2, scales, p.groups)
            if p.first.name in priors:
                priors[p.first.name] = tuple(t / scales for t in priors[p.first.name])
            largest = max(largest, float(scales.log().abs().max()))
        return largest

    def _pairs(self, graph: Graph, ctx: PassContext) -> list[_Pair]:
        readers = Counter(p for n in graph.nodes() for p in set(n.params.values()))
        pairs = []
        for first in graph.find(kind=NodeKind.MODULE):
            if first.op not in _LAYERS or _packed(first):
                continue
            if self.layers and not any(matches_pattern(first, pattern) for pattern in self.layers):
                continue
            pair, reason = self._pair_from(graph, first, readers)
            if pair is None:
                ctx.explain(f"%{first.name} stays: {reason}")
            else:
                pairs.append(pair)
        return pairs

    def _pair_from(self, graph: Graph, first: Node, readers: Counter) -> tuple[_Pair | None, str]:
        uses = graph.uses(first)
        if len(uses) != 1:
            return None, f"its output has {len(uses)} readers"
        second, port = uses[0]
        if _packed(second):
            return None, f"%{second.name} holds torch's packed int8 weights (dynamic quantization ran)"
        if second.kind != NodeKind.MODULE or second.op != first.op:
            return None, f"next is %{second.name} ({second.op}), not another {first.op}"
        if port != 0 or len(graph.inputs(second)) != 1 or second.args != (Ref(0),):
            return None, f"%{second.name} takes other inputs too"
        if any(readers[name] > 1 for node in (first, second) for name in node.params.values()):
            return None, "weights shared with another node"
        if first.act not in (None, "relu", "relu6"):
            return None, f"its activation {first.act!r} does not commute with a positive scale"
        if first.act == "relu6" and self.relu6 == "keep":
            return None, "its ReLU6 would need a clamp per channel (relu6=prior or relu6=relu equalize it)"
        if first.act == "relu6" and self.relu6 == "prior" and first.norm_prior is None:
            return None, "no folded BatchNorm says which channels stay below its ReLU6's clamp"
        w1, w2 = graph.param(first, "weight"), graph.param(second, "weight")
        groups = int(second.attrs.get("groups", 1))
        if w1 is None or w2 is None or w1.shape[0] != w2.shape[1] * groups:
            return None, f"%{second.name} does not read {first.name}'s channels one for one"
        return _Pair(first, second, groups), ""

    def _absorb(self, graph: Graph, pairs: list[_Pair], weights: dict, biases: dict) -> int:
        absorbed = 0
        for p in pairs:
            if p.first.act != "relu" or p.first.norm_prior is None or biases[p.first.name] is None:
                continue
            if p.second.op != "linear" and _pads(p.second):
                continue  # the constant would reach the border outputs through fewer taps
            mean, std = p.first.norm_prior
            shift = absorbable_shift(mean.double(), std.double())
            if not bool((shift > 0).any()):
                continue
            if biases[p.second.name] is None:
                zeros = torch.zeros(weights[p.second.name].shape[0])
                p.second.params["bias"] = graph.add_param(f"{p.second.source.module_path or p.second.name}.bias", zeros)
                p.second.attrs["bias"] = True
                biases[p.second.name] = zeros.double()
            biases[p.first.name] = biases[p.first.name] - shift
            biases[p.second.name] = biases[p.second.name] + absorbed_bias(weights[p.second.name], shift, p.groups)
            p.first.norm_prior = (mean - shift.float(), std)
            absorbed += int((shift > 0).sum())
        return absorbed


def _median(spreads: dict[str, float]) -> float:
    values = sorted(spreads.values())
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else math.sqrt(values[middle - 1] * values[middle])
