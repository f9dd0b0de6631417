"""``aciq``: analytical clipping of activations (and optionally weights) from a prior.

requires: ``calibrated``    provides: ``clipped``

For every observed activation the clip value comes in closed form from its
statistics (spec section 2): Laplace ``a = b * W0(3 * 4^M)`` with ``b`` the mean
absolute deviation, Gaussian ``a = sigma * r(M)`` (numeric optimum), or a fixed
``k`` standard deviations. Tensors after a fused ReLU are clipped one-sided,
``[0, max(mean, 0) + a]``, with the optimum of ``M + 1`` bits; others
``[max(min, mean - a), that + 2a]``. ``convert`` then builds the grid from the
clip instead of the observed range::

    %conv1 = conv2d(...) ...  # mode=static obs=... range=[0, 7.31]
    %conv1 = conv2d(...) ...  # mode=static obs=... range=[0, 7.31] clip=[0, 2.94] bits=4

Options:
    prior: ``laplace``, ``gauss``, ``std`` (``k`` standard deviations) or
        ``mix`` (per tensor, whichever of Laplace and Gaussian promises the
        lower expected error).
    bits: Bit width the clip is optimal for (2..8).
    k: Multiplier of the standard deviation for ``prior=std``.
    per_channel: One clip per channel of each activation (the paper's
        research mode), from the channel's own moments and range, and with
        ``bitalloc{activations=true}`` before it, from the channel's own bit
        width. Integer kernels need one scale per tensor, so only
        ``simulate`` accepts this; ``convert`` refuses it.
    weights: Also clip weights, per output channel (the reference never does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from qcompile.errors import QCompileError
from qcompile.ir.graph import Graph
from qcompile.ir.node import Node
from qcompile.pipeline import FLOAT_GRAPH_ONLY, Pass, PassContext, PassResult, option, register_pass
from qcompile.quant.aciq import clip_interval, gauss_ratio, laplace_ratio, mse_gauss, mse_laplace

ONE_SIDED_ACTS = {"relu", "relu6"}


def choose_alpha(prior: str, bits: int, one_sided: bool, mad: float, std: float, k: float) -> tuple[float, str]:
    """(clip value, prior used) for one tensor or channel."""
    laplace = mad * laplace_ratio(bits, one_sided)
    gauss = std * gauss_ratio(bits, one_sided)
    if prior == "laplace":
        return laplace, "laplace"
    if prior == "gauss":
        return gauss, "gauss"
    if prior == "std":
        return k * std, "std"
    m = bits + 1 if one_sided else bits
    if mse_laplace(laplace, mad, m) <= mse_gauss(gauss, std, m):
        return laplace, "laplace"
    return gauss, "gauss"


def _same_clip(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return all(torch.equal(torch.as_tensor(x), torch.as_tensor(y)) for x, y in zip(a, b, strict=True))


@register_pass
@dataclass(frozen=True)
class Aciq(Pass):
    """Clip activations at the analytically optimal value for a Laplace or Gaussian prior."""

    name = "aciq"
    requires = ("calibrated",)
    provides = ("clipped",)
    forbids = FLOAT_GRAPH_ONLY
    needs_statistics = ("moments",)

    prior: Literal["laplace", "gauss", "std", "mix"] = "laplace"
    bits: int = option(8, low=2, high=8)
    k: float = option(2.0, above=0)
    per_channel: bool = False
    weights: bool = False

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        counts: dict[str, int] = {}
        for node in graph.nodes():
            stats = node.quant.stats
            if stats is None or node.quant.observer is None:
                continue
            if stats.moments is None:
                raise QCompileError(f"%{node.name} has no moments: calibrate again with aciq in the pipeline",
                                    hint="statistics files or earlier runs without aciq lack them")
            if self.per_channel and stats.moments.channels is not None:
                clip, used = self._clip_per_channel(node)
            else:
                clip, used = self._clip(node)
            if not _same_clip(node.quant.clip, clip) or node.quant.bits != self.bits:
                node.quant.clip, node.quant.bits = clip, self.bits
                counts[used] = counts.get(used, 0) + 1
        if self.weights:
            counts["weights"] = sum(self._clip_weight(graph, n) for n in graph.nodes() if n.quant.weight_stats)
        return PassResult(bool(counts), counts)

    def _clip(self, node: Node) -> tuple[tuple[float, float], str]:
        moments = node.quant.stats.moments
        one_sided = node.act in ONE_SIDED_ACTS
        alpha, used = choose_alpha(self.prior, self.bits, one_sided, float(moments.mad), float(moments.std), self.k)
        lo, hi = clip_interval(alpha, float(moments.mean), float(node.quant.stats.min), one_sided)
        # never widen beyond what was seen: a clip only ever removes range
        lo, hi = max(lo, float(node.quant.stats.min)), min(hi, float(node.quant.stats.max))
        return (min(lo, 0.0) if one_sided else lo, max(hi, lo)), used

    def _clip_per_channel(self, node: Node) -> tuple[tuple[torch.Tensor, torch.Tensor], str]:
        channels = node.quant.stats.moments.channels
        one_sided = node.act in ONE_SIDED_ACTS
        bits = node.quant.channel_bits
        los, his, used = [], [], set()
        for c in range(len(channels.mad)):
            m = int(bits[c]) if bits is not None else self.bits
            alpha, prior = choose_alpha(self.prior, m, one_sided, float(channels.mad[c]), float(channels.std[c]),
                                        self.k)
            low, high = float(channels.min[c]), float(channels.max[c])
            lo, hi = clip_interval(alpha, float(channels.mean[c]), low, one_sided)
            lo, hi = max(lo, low), min(hi, high)
            lo = min(lo, 0.0) if one_sided else lo
            los.append(lo)
            his.append(max(hi, lo))
            used.add(prior)
        return (torch.tensor(los), torch.tensor(his)), "+".join(sorted(used)) + " per channel"

    def _clip_weight(self, graph: Graph, node: Node) -> int:
        weight = graph.param(node, "weight").detach().float()
        flat = weight.reshape(weight.shape[0], -1)
        mean = flat.mean(dim=1)
        mad = (flat - mean[:, None]).abs().mean(dim=1)
        std = flat.std(dim=1)
        stats = node.quant.weight_stats
        los, his = [], []
        for c in range(flat.shape[0]):
            alpha, _ = choose_alpha(self.prior, self.bits, False, float(mad[c]), float(std[c]), self.k)
            lo, hi = clip_interval(alpha, float(mean[c]), float(flat[c].min()), False)
            los.append(max(lo, float(flat[c].min())))
            his.append(min(hi, float(flat[c].max())))
        lo_t, hi_t = torch.tensor(los), torch.tensor(his)
        if not node.quant.weight_observer.per_channel:
            lo_t, hi_t = lo_t.min(), hi_t.max()
        stats.lo, stats.hi = lo_t, hi_t
        return 1
