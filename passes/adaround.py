"""``adaround``: learn each weight's rounding, up or down, layer by layer on calibration data (Nagel et al. 2020).

requires: ``calibrated``    provides: ``adarounded``

For every conv and linear layer that the following ``convert`` quantizes,
in graph order, on ``samples`` calibration samples: the layer's inputs in
the quantized model (a float twin on ``convert``'s grids, with the earlier
layers already rounded), the float model's outputs of the layer, and then
:func:`qcompile.quant.adaround.learn_rounding` on them. The learned weight
is written back exactly on ``convert``'s grid (the same scales, decided from
the same statistics and options), so ``convert`` turns it into the learned
codes; a layer whose output error the learned rounding does not lower keeps
round-to-nearest. The float model and the twin run side by side, so memory
stays at two live sets of activations, not every layer's::

    %conv1 = conv2d(%quantize_x, $conv1.{weight,bias}) ...  # $conv1.weight: float
    %conv1 = conv2d(%quantize_x, $conv1.{weight,bias}) ...  # $conv1.weight: on convert's grid, rounded as learned

Put it after calibration (and ``aciq``) and before ``convert``; a
``bias-correct`` after it measures the shift that the learned rounding
leaves::

    fuse,calibrate,adaround,convert{weight-bits=4}

Deterministic for a given ``seed``. Under ``torchrun`` every rank learns the
same rounding on the same samples (no speed-up yet).

A convolution (2-d) or linear layer is reconstructed on ``positions`` output
positions drawn at random from all the samples rather than on whole
samples: the input patches at those positions (the quantized model's) and
the float outputs there, each step a GEMM over ``batch-size`` of them
(:func:`qcompile.quant.adaround.sampled_rows`). Steps then cost little, so
that a thousand of them per layer fit in the time a hundred whole-sample
steps took (``positions=0`` restores those).

Options:
    samples: Calibration samples to reconstruct on (their activations stay in memory).
    iterations: Optimizer steps per layer (fewer where the budget requires).
    batch_size: Output positions per step (samples per step with ``positions=0``).
    positions: Output positions per layer to reconstruct on (0: whole samples, each step the layer over
        ``batch-size`` samples).
    budget: Seconds for the whole pass (0: no limit): each layer gets an equal share of what is left, its
        steps shrinking to fit (50 at least); layers left when it is spent keep round-to-nearest.
    seed: Seed of the sample order.
    regularization: Weight of the term that pushes each rounding to up or down.
    lr: Adam's learning rate for the rounding variables.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.func import functional_call

from qcompile.data import calibration_samples
from qcompile.errors import PassError, QCompileError
from qcompile.interpreter import Interpreter
from qcompile.ir.graph import Graph
from qcompile.ir.modules import FUSED_ACTIVATIONS
from qcompile.ir.node import Node, NodeKind
from qcompile.ir.targets import resolve_target
from qcompile.pipeline import (
    FLOAT_GRAPH_ONLY,
    STATICALLY_CONVERTED,
    Pass,
    PassContext,
    PassResult,
    first_providing,
    option,
    register_pass,
)
from qcompile.quant.adaround import Rows, learn_rounding, sampled_rows, weight_grid
from qcompile.quant.emulate import quantized_twin
from qcompile.quant.integer_weights import integer_weight
from qcompile.quant.op_table import WEIGHTED


def _activation(node: Node):
    return resolve_target(FUSED_ACTIVATIONS[node.act]) if node.act else None


def _layer_function(module: torch.nn.Module, node: Node):
    """``f(x, w)``: the layer on ``x`` with weight ``w`` and its own bias, then its fused activation."""
    activation = _activation(node)

    def layer(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        out = functional_call(module, {"weight": weight}, (x,), strict=False)
        return activation(out) if activation is not None else out

    return layer


@register_pass
@dataclass(frozen=True)
class AdaRound(Pass):
    """Learn each weight's rounding (up or down) so that each layer's output stays close to float."""

    name = "adaround"
    requires = ("calibrated",)
    provides = ("adarounded",)
    forbids = FLOAT_GRAPH_ONLY

    samples: int = option(128, low=1)
    iterations: int = option(1000, low=1)
    batch_size: int = option(512, low=1)
    positions: int = option(8192, low=0)
    budget: float = option(480.0, low=0)
    seed: int = option(0, low=0)
    regularization: float = option(0.01, above=0)
    lr: float = option(1e-2, above=0)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if "adarounded" in graph.facts:
            return PassResult(False)
        target = first_providing(ctx.remaining_passes, STATICALLY_CONVERTED)
        if target is None:
            raise QCompileError("'adaround' learns the rounding of the integer weights that a later convert "
                                "pass makes, and none follows it",
                                hint="put it before convert, e.g. fuse,calibrate,adaround,convert")
        inputs = calibration_samples(ctx.calib_data, self.samples, self.name)
        from qcompile.passes.convert import decide_grids

        decided = graph.copy()
        decide_grids(decided, target)
        layers = {n.name: n for n in graph.nodes() if n.kind == NodeKind.MODULE and n.op in WEIGHTED
                  and n.quant.weight_stats is not None and decided.node(n.name).quant.weight_qparams is not None}
        twin = quantized_twin(graph, target, ctx)
        twin_run = Interpreter(twin)
        feeding = {twin.inputs(twin.node(name))[0].name for name in layers}
        float_steps = Interpreter(graph).steps(*inputs)
        stash: dict[str, torch.Tensor] = {}
        learned: dict[str, torch.Tensor] = {}
        learned_codes: dict[str, torch.Tensor] = {}
        gains: list[float] = []
        flipped: list[float] = []
        generator = torch.Generator().manual_seed(self.seed)
        started = time.monotonic()
        stepping = [0.0]  # seconds spent in learn_rounding

        def float_output(name: str) -> torch.Tensor:
            for node, value in float_steps:
                if node.name == name:
                    return value
            raise PassError(f"adaround: %{name} did not run in the float graph")

        def edit(node: Node, value: torch.Tensor):
            if node.name not in layers:
                return None
            target_output = float_output(node.name)
            if self.budget and time.monotonic() - started > self.budget:
                return None  # out of time: round to nearest, as the twin already does
            weight = graph.param(layers[node.name], "weight")
            grid = weight_grid(weight, decided.node(node.name).quant)
            x = stash[twin.inputs(node)[0].name]
            module = twin_run.module(node)
            rows = sampled_rows(module, _activation(node), x, target_output, self.positions, generator) \
                if self.positions else None
            if rows is None:  # whole samples: another kind of layer, or positions=0
                rows = Rows(x, target_output, _layer_function(module, node))
            share = None  # with a budget: an equal share of what is left for each layer still to learn, less
            if self.budget:  # the work around the steps (forward passes, patches), as it went per layer so far
                elapsed, left = time.monotonic() - started, len(layers) - len(learned)
                around = (elapsed - stepping[0]) / max(len(learned), 1)
                share = (self.budget - elapsed - around * left) / left
            began = time.monotonic()
            result = learn_rounding(weight, grid, rows.layer, rows.inputs, rows.targets, iterations=self.iterations,
                                    batch_size=self.batch_size, regularization=self.regularization,
                                    lr=self.lr, generator=generator, seconds=share)
            stepping[0] += time.monotonic() - began
            codes = result.codes if result.learned_error <= result.nearest_error else grid.codes(weight)
            learned[node.name], learned_codes[node.name] = grid.values(codes), codes
            gains.append(1 - min(result.learned_error, result.nearest_error) / max(result.nearest_error, 1e-30))
            flipped.append(result.flipped if codes is result.codes else 0.0)
            ctx.progress("adaround", len(learned), len(layers))
            return functional_call(twin_run.module(node), {"weight": learned[node.name]}, (x,), strict=False)

        for node, value in twin_run.steps(*inputs, edit=edit):
            if node.name in feeding:
                stash[node.name] = value
        for name, weight in learned.items():
            key = layers[name].params["weight"]
            graph.params[key] = weight.requires_grad_(graph.params[key].requires_grad)
            codes = integer_weight(weight, decided.node(name).quant).codes
            if not torch.equal(learned_codes[name].to(codes.dtype), codes):  # convert must hold what was learned
                raise PassError(f"adaround: the learned weight of %{name} is off convert's grid")
        mean_gain = sum(gains) / len(gains) if gains else 0.0
        return PassResult(bool(learned), {
            "layers": len(learned), "left at nearest (budget)": len(layers) - len(learned),
            "output error vs nearest": f"-{mean_gain:.0%}",
            "weights flipped": f"{sum(flipped) / len(flipped):.1%}" if flipped else "0%"})
