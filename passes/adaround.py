"""``adaround``: learn each weight's rounding, up or down, layer by layer on calibration data (Nagel et al. 2020).

requires: ``calibrated``    provides: ``adarounded``

For every conv and linear layer that the following ``convert`` quantizes,
in graph order, on ``samples`` calibration samples: the layer's inputs in
the quantized model (a float twin on ``convert``'s grids, with the earlier
layers already rounded), the float model's outputs of the layer, and then
:func:`qcompile.quant.adaround.learn_rounding` on them (the walk is
:func:`qcompile.quant.layer_walk.walk_layers`, shared with ``gptq``). The learned weight
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

from dataclasses import dataclass

import torch

from qcompile.ir.graph import Graph
from qcompile.pipeline import FLOAT_GRAPH_ONLY, Pass, PassContext, PassResult, option, register_pass
from qcompile.quant.adaround import learn_rounding
from qcompile.quant.layer_walk import Layer, following_convert, walk_layers


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
        target = following_convert(ctx, self.name)

        def solve(layer: Layer) -> torch.Tensor:
            rows = layer.rows
            return learn_rounding(layer.weight, layer.grid, rows.layer, rows.inputs, rows.targets,
                                  iterations=self.iterations, batch_size=self.batch_size,
                                  regularization=self.regularization, lr=self.lr, generator=layer.generator,
                                  seconds=layer.seconds).codes

        walked = walk_layers(graph, ctx, self, target, solve, samples=self.samples, positions=self.positions,
                             seed=self.seed, budget=self.budget)
        return PassResult(walked.rounded > 0, walked.stats())
