"""``brecq``: learn the weights' rounding block by block, with activation grids in the loop (BRECQ, QDrop).

requires: ``calibrated``    provides: ``adarounded``

Where ``adaround`` matches each layer's float output alone, ``brecq`` lets
the layers of a block (a residual block, a numbered submodule such as
``features.3``, or two layers of a chain) learn
their rounding together against the float model's value at the block's end,
with the block's activations on the grids ``convert`` will use
(:mod:`qcompile.quant.block_reconstruction`). With ``drop`` (QDrop), each
step keeps a random share of the activations inside the block at their float
values. It pays where activation grids are coarse (4-bit activations); with
8-bit activations the layer-wise passes (``adaround``, ``gptq``) did as well
or better in the measurements of ``docs/methods.md``. Each step runs a whole
block on ``batch-size`` samples.

The blocks run in graph order on the twin's own values (the earlier blocks
already rounded); a block whose output error the learned rounding does not
lower on all ``samples`` keeps round-to-nearest. The learned weights are
written back exactly on ``convert``'s grids, as ``adaround`` does::

    %conv1 = conv2d(%x, $layer1.0.conv1.{weight,bias}) ...  # $layer1.0.conv1.weight: float
    %conv1 = conv2d(%x, $layer1.0.conv1.{weight,bias}) ...  # on convert's grid, rounded as learned for the block

Put it after calibration (and ``aciq``) and before ``convert``::

    fuse,calibrate,aciq{bits=4},brecq,convert{weight-bits=4}

Deterministic for a given ``seed``.

Options:
    samples: Calibration samples to reconstruct on (each block's input and float output on all of them stay
        in memory).
    iterations: Optimizer steps per block (fewer where the budget requires).
    batch_size: Samples per step.
    drop: Probability that an activation inside the block keeps its float value at a step (QDrop; 0: BRECQ).
    min_layers: In a model without numbered submodules, the rounded layers a block holds before it ends at
        the next cut.
    budget: Seconds for the whole pass (0: no limit): each block gets its layers' share of what is left, its
        steps shrinking to fit (50 at least); blocks reached when it is spent keep round-to-nearest.
    seed: Seed of the sample order and of the dropped activations.
    regularization: Weight of the term that pushes each rounding to up or down.
    lr: Adam's learning rate for the rounding variables.
    learn_grids: Learn the step of the activation grids inside a block too (LSQ; the zero point kept), and
        write it as the value's clip range: ``auto`` those of fewer than 8 bits (on 8-bit grids the
        calibrated range did better on held-out data), ``all``, or ``none``; grids that other values share,
        widened ReLU6 grids and symmetric grids keep theirs.
    grid_lr: Adam's learning rate for the logarithm of those steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from qcompile.ir.graph import Graph
from qcompile.pipeline import FLOAT_GRAPH_ONLY, Pass, PassContext, PassResult, option, register_pass
from qcompile.quant.block_reconstruction import reconstruct_blocks
from qcompile.quant.layer_walk import following_convert


@register_pass
@dataclass(frozen=True)
class Brecq(Pass):
    """Learn the weights' rounding block by block against the float model, activation grids in the loop."""

    name = "brecq"
    requires = ("calibrated",)
    provides = ("adarounded",)
    forbids = FLOAT_GRAPH_ONLY

    samples: int = option(256, low=1)
    iterations: int = option(200, low=1)
    batch_size: int = option(32, low=1)
    drop: float = option(0.5, low=0, high=1)
    min_layers: int = option(2, low=1)
    budget: float = option(600.0, low=0)
    seed: int = option(0, low=0)
    regularization: float = option(0.01, above=0)
    lr: float = option(1e-2, above=0)
    learn_grids: Literal["auto", "all", "none"] = "auto"
    grid_lr: float = option(1e-3, above=0)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if "adarounded" in graph.facts:
            return PassResult(False)
        target = following_convert(ctx, self.name)
        walked, moved = reconstruct_blocks(graph, ctx, self, target, samples=self.samples, iterations=self.iterations,
                                    batch_size=self.batch_size, drop=self.drop, min_layers=self.min_layers,
                                    regularization=self.regularization, lr=self.lr, seed=self.seed,
                                    budget=self.budget, learn_grids=self.learn_grids, grid_lr=self.grid_lr)
        stats = walked.stats() | ({"activation grids learned": moved} if self.learn_grids != "none" else {})
        return PassResult(walked.rounded > 0, stats)
