"""Block reconstruction (BRECQ, Li et al. 2021) with randomly dropped activation quantization (QDrop, Wei et al. 2022).

AdaRound (:mod:`qcompile.quant.adaround`) learns each layer's rounding
against that layer's float output. Here the layers of a block learn their
rounding together, against the float model's value at the block's end, with
the activations inside the block on their grids, so that one layer's
rounding can make up for another's and for the activation grids::

    minimise  || B(x^ ; w~_1 .. w~_k) - B(x ; w_1 .. w_k) ||^2  +  lambda * sum_l reg(h(V_l))

``B`` is the block in the quantized twin (:func:`qcompile.quant.emulate.quantized_twin`,
every activation on ``convert``'s grid), ``x^`` its input there with the
earlier blocks already rounded, ``x`` the float model's; ``w~_l`` and the
regulariser are AdaRound's. The activation grids stay the ones calibration
chose (``convert`` uses them); the gradient passes through them unchanged.
With ``drop`` (QDrop) each element of each activation grid inside the block
keeps its float value with that probability at each step, which trains the
rounding for a flatter neighbourhood of the grids rather than for one
draw of the activation errors.

Blocks are cut from the twin in graph order where a single value is live
(everything before it feeds later nodes only through it), at a node of the
float model (not a ``fake_quantize``). A block ends at such a cut after a
node that merges two values (a residual addition), where the next rounded
layer lies in another numbered submodule than the last one (``features.2``
then ``features.3``: MobileNetV2's and ResNet's blocks), where no rounded
layer follows, and in a model without numbered submodules once it holds
``min_layers`` rounded layers (a chain, two layers at a time). Layers with
no cut after them (none where the model's output is one value) keep
round-to-nearest::

    [stem conv] [conv, conv, add] x 9 [pool, flatten, fc]     (ResNet-20: 11 blocks)
    [features.0] [features.1: dw, project] [features.2: expand, dw, project] ... [classifier]   (MobileNetV2)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from qcompile.data import calibration_samples
from qcompile.errors import PassError
from qcompile.interpreter import Interpreter
from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind
from qcompile.ir.quant_types import QParams
from qcompile.pipeline import Pass, PassContext
from qcompile.quant.adaround import (
    RoundingVariables,
    reconstruction_error,
    rectified_sigmoid,
    rounding_penalty,
    schedule,
    weight_grid,
)
from qcompile.quant.emulate import grid_range, quantized_twin
from qcompile.quant.layer_walk import Walked, rounded_layers, write_codes


@dataclass(frozen=True)
class Block:
    """Twin nodes in graph order; the values live into them (twin names); the node at the end, whose value
    the float model also has under its name; and the rounded layers among the nodes."""

    nodes: list[Node]
    inputs: list[str]
    output: str
    layers: list[str]


def _is_fake_quantize(node: Node) -> bool:
    from qcompile.passes.simulate import FAKE_QUANTIZE

    return node.kind == NodeKind.FUNCTION and node.target == FAKE_QUANTIZE


def _module_block(node: Node) -> str:
    """The numbered submodule a layer lies inside: its module path up to the first index (``features.2`` of
    ``features.2.conv.0.0``, ``layers.3`` of ``layers.3.conv1``); empty where the path has none or the layer
    is that submodule itself (``layers.3`` of a ``Sequential`` of layers)."""
    parts = node.source.module_path.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[:i + 1])
    return ""


def blocks(twin: Graph, layers: set[str], min_layers: int) -> list[Block]:
    """The twin cut into blocks (see the module docstring)."""
    order = [n for n in twin.nodes() if n.kind not in (NodeKind.INPUT, NodeKind.PARAM, NodeKind.OUTPUT)]
    producers = {n.name: [p.name for p in twin.inputs(n) if p.kind != NodeKind.PARAM] for n in order}
    last_use = {p.name: len(order) for p in twin.inputs(twin.output_node)}
    for i, node in enumerate(order):
        for name in producers[node.name]:
            last_use[name] = max(last_use.get(name, i), i)
    rounded = [n for n in order if n.name in layers]
    following = {a.name: b for a, b in zip(rounded, rounded[1:], strict=False)}  # the next rounded layer
    found: list[Block] = []
    begin, live, held, last = 0, {n.name for n in twin.input_nodes}, 0, None
    for i, node in enumerate(order):
        live = {name for name in live if last_use.get(name, -1) > i}
        if node.name in last_use:
            live.add(node.name)
        if node.name in layers:
            held, last = held + 1, node
        if not held or live != {node.name} or _is_fake_quantize(node):
            continue
        after = following.get(last.name)
        if after is None or len(set(producers[node.name])) >= 2:
            end = True  # no rounded layer follows, or a merge (a residual addition)
        elif _module_block(last) or _module_block(after):
            end = _module_block(last) != _module_block(after)
        else:
            end = held >= min_layers
        if end:
            nodes = order[begin:i + 1]
            inside = {n.name for n in nodes}
            inputs = list(dict.fromkeys(p for n in nodes for p in producers[n.name] if p not in inside))
            found.append(Block(nodes, inputs, node.name, [n.name for n in nodes if n.name in layers]))
            begin, held = i + 1, 0
    return found


class ActivationGrid:
    """An activation grid inside a block whose step is learned (LSQ, Esser et al. 2020: the gradient reaches
    the step through the rounding passed straight through), its zero point and code range fixed."""

    def __init__(self, twin: Graph, node: Node, qparams: QParams):
        self.node, self.value = node, twin.inputs(node)[0].name
        self.qparams = qparams
        lo, hi, bits = (twin.params[p.target] for p in twin.inputs(node)[1:4])
        self.levels = float(2.0 ** float(bits) - 1)
        step = (hi.double() - lo.double()) / self.levels
        self.zero = float(torch.round(-lo.double() / step))
        self.log_step = torch.log(step).float().reshape(()).requires_grad_(True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        step = self.log_step.exp()
        u = x / step
        u = u + (torch.round(u) - u).detach()
        return torch.clamp(u, -self.zero, self.levels - self.zero) * step

    def clip(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The range whose grid, as ``convert`` chooses it, has the learned step and the same zero point."""
        q, step = self.qparams, float(self.log_step.detach().exp())
        zero = float(q.zero_point)
        return torch.tensor((q.quant_min - zero) * step), torch.tensor((q.quant_max - zero) * step)


def learnable_grids(twin: Graph, block: Block, decided: Graph) -> list[ActivationGrid]:
    """The block's activation grids whose step can be learned: one value's own range and asymmetric grid
    (not a grid another value shares or copies, nor a widened ReLU6 grid)."""
    from qcompile.passes.convert import range_qparams

    shared = {n.quant.shares for n in decided.nodes() if n.quant.shares is not None}
    found = []
    for node in block.nodes:
        if not _is_fake_quantize(node):
            continue
        name = twin.inputs(node)[0].name
        q = decided.node(name).quant
        if q.observer is None or q.observer.symmetric or q.shares is not None or name in shared \
                or q.qparams is None or q.qparams.per_channel or (q.clip is None and q.stats is None):
            continue
        own = range_qparams(q)
        if torch.equal(own.scale, q.qparams.scale) and torch.equal(own.zero_point, q.qparams.zero_point):
            found.append(ActivationGrid(twin, node, q.qparams))
    return found


def keep_grid(graph: Graph, twin: Graph, grid: ActivationGrid) -> None:
    """Give the value the learned grid: its clip in ``graph`` (which ``convert`` turns into the grid) and the
    twin's grid, as ``convert`` will choose it from that clip."""
    from qcompile.passes.convert import range_qparams

    q = graph.node(grid.value).quant
    q.clip = grid.clip()
    lo, hi, _ = grid_range(range_qparams(q))
    lo_node, hi_node = twin.inputs(grid.node)[1:3]
    twin.params[lo_node.target], twin.params[hi_node.target] = lo.reshape(twin.params[lo_node.target].shape), \
        hi.reshape(twin.params[hi_node.target].shape)


class BlockRun:
    """Runs one block of the twin on given input values, with given weights for its rounded layers and
    activation grids that pass the gradient through and keep each element's float value with probability
    ``drop``."""

    def __init__(self, run: Interpreter, block: Block):
        self.run, self.block = run, block
        graph = run.graph
        self._ports = {n.name: graph.inputs(n) for n in block.nodes}

    def __call__(self, values: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], drop: float = 0.0,
                 generator: torch.Generator | None = None,
                 grids: dict[str, ActivationGrid] | None = None) -> torch.Tensor:
        """The block's output; ``grids`` (by fake_quantize node) replace the twin's activation grids."""
        graph = self.run.graph
        values = dict(values)
        for node in self.block.nodes:
            args = [graph.params[p.target] if p.kind == NodeKind.PARAM else values[p.name]
                    for p in self._ports[node.name]]
            if _is_fake_quantize(node):
                x = args[0]
                if grids and node.name in grids:
                    value = grids[node.name](x)
                else:  # the twin's grid, the gradient passing straight through
                    value = x + (self.run.compute(node, args) - x).detach()
                if drop > 0:
                    value = torch.where(torch.rand(x.shape, generator=generator) < drop, x, value)
            else:
                value = self.run.compute(node, args, weights.get(node.name))
            values[node.name] = value
        return values[self.block.output]

    @torch.no_grad()
    def all(self, values: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], batch: int,
            grids: dict[str, ActivationGrid] | None = None) -> torch.Tensor:
        """The block's output on every sample of ``values``, ``batch`` samples at a time, without dropping."""
        count = len(next(iter(values.values())))
        return torch.cat([self({k: v[i:i + batch] for k, v in values.items()}, weights, grids=grids)
                          for i in range(0, count, batch)])


def learn_block(block_run: BlockRun, inputs: dict[str, torch.Tensor], target: torch.Tensor,
                variables: dict[str, RoundingVariables], *, iterations: int, batch_size: int, drop: float,
                regularization: float, lr: float, generator: torch.Generator, seconds: float | None,
                grids: dict[str, ActivationGrid] | None = None, grid_lr: float = 1e-3,
                beta: tuple[float, float] = (20.0, 2.0), warmup: float = 0.2) -> None:
    """Learn the rounding variables of a block's layers together (see the module docstring), and the steps of
    ``grids``; with ``seconds`` the steps shrink to fit as :func:`qcompile.quant.adaround.schedule` does."""
    groups = [{"params": [v.v for v in variables.values()], "lr": lr}]
    if grids:
        groups.append({"params": [g.log_step for g in grids.values()], "lr": grid_lr})
    optimizer = torch.optim.Adam(groups)
    count = len(target)
    with torch.enable_grad():
        for step, start, steps in schedule(iterations, warmup, seconds):
            pick = torch.randint(count, (min(batch_size, count),), generator=generator)
            hs = {name: rectified_sigmoid(v.v) for name, v in variables.items()}
            weights = {name: variables[name].soft_weight(h) for name, h in hs.items()}
            out = block_run({name: value[pick] for name, value in inputs.items()}, weights, drop, generator, grids)
            loss = reconstruction_error(out, target[pick])
            if step >= start:
                loss = loss + regularization * sum(rounding_penalty(h, step, start, steps, beta)
                                                   for h in hs.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def reconstruct_blocks(graph: Graph, ctx: PassContext, owner: Pass, target: Pass, *, samples: int,
                       iterations: int, batch_size: int, drop: float, min_layers: int, regularization: float,
                       lr: float, seed: int, budget: float = 0.0, learn_grids: str = "none",
                       grid_lr: float = 1e-3) -> tuple[Walked, int]:
    """Give the layers that ``target`` (a ``convert``) quantizes the codes learned block by block (see the
    module docstring) and write them into ``graph`` on ``convert``'s grids. A block keeps round-to-nearest
    where the learned rounding does not lower its output error on all ``samples``, and so do the blocks
    reached after ``budget`` seconds (0: no limit). With ``learn_grids`` ``all`` (or ``auto``: those of fewer
    than 8 bits), the steps of the block's activation grids that :func:`learnable_grids` admits are learned
    too and, where the block keeps its learned rounding, written into ``graph`` as clip ranges. Returns the
    walk and the number of grids moved."""
    inputs = calibration_samples(ctx.calib_data, samples, owner.name)
    decided, layers = rounded_layers(graph, target)
    twin = quantized_twin(graph, target, ctx)
    run = Interpreter(twin)
    cut = blocks(twin, set(layers), min_layers)
    float_steps = Interpreter(graph).steps(*inputs)
    count = len(inputs[0])
    values = {n.name: x for n, x in zip(twin.input_nodes, inputs, strict=True)}
    generator = torch.Generator().manual_seed(seed)
    started = time.monotonic()
    chosen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    gains: list[float] = []
    changed: list[float] = []
    left = sum(len(b.layers) for b in cut)
    done = moved = 0

    def float_value(name: str) -> torch.Tensor:
        for node, value in float_steps:
            if node.name == name:
                return value
        raise PassError(f"{owner.name}: %{name} did not run in the float graph")

    for block in cut:
        wanted = float_value(block.output)
        for name in block.inputs:
            if not isinstance(values[name], torch.Tensor) or len(values[name]) != count:
                raise PassError(f"{owner.name}: %{name} is not a tensor of the {count} samples",
                                hint="use adaround, which reconstructs layer by layer")
        block_run = BlockRun(run, block)
        into = {name: values[name] for name in block.inputs}

        weights = {name: graph.param(layers[name], "weight") for name in block.layers}
        grids = {name: weight_grid(weights[name], decided.node(name).quant) for name in block.layers}
        nearest = {name: grids[name].codes(weights[name]) for name in block.layers}
        nearest_weights = {name: grids[name].values(c) for name, c in nearest.items()}
        elapsed = time.monotonic() - started
        codes = nearest
        if not budget or elapsed < budget:
            share = (budget - elapsed) * len(block.layers) / left if budget else None
            variables = {name: RoundingVariables(weights[name], grids[name]) for name in block.layers}
            steps = {g.node.name: g for g in learnable_grids(twin, block, decided)
                     if learn_grids == "all" or (learn_grids == "auto" and g.levels < 255)}
            learn_block(block_run, into, wanted, variables, iterations=iterations, batch_size=batch_size,
                        drop=drop, regularization=regularization, lr=lr, generator=generator, seconds=share,
                        grids=steps, grid_lr=grid_lr)
            learned = {name: v.codes() for name, v in variables.items()}
            learned_weights = {name: grids[name].values(c) for name, c in learned.items()}
            errors = [float(reconstruction_error(block_run.all(into, w, batch_size, g), wanted))
                      for w, g in ((nearest_weights, None), (learned_weights, steps))]
            if not all(map(math.isfinite, errors)):
                raise PassError(f"{owner.name}: the output error of the block ending at %{block.output} "
                                "is not finite")
            if errors[1] <= errors[0]:
                codes = learned
                for grid in steps.values():
                    keep_grid(graph, twin, grid)
                moved += len(steps)
            gains.append(1 - min(errors) / max(errors[0], 1e-30))
            for name in block.layers:
                chosen[name] = (grids[name].values(codes[name]), codes[name])
                changed.append(float((codes[name] != nearest[name]).double().mean()))
        left -= len(block.layers)
        done += len(block.layers)
        ctx.progress(owner.name, done, len(layers))
        rounded = {name: grids[name].values(c) for name, c in codes.items()}
        values = {block.output: block_run.all(into, rounded, batch_size)}
    write_codes(graph, decided, chosen, owner)
    return Walked(len(chosen), len(layers) - len(chosen), gains, changed), moved
