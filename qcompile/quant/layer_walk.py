"""Choose the integer codes of each weighted layer in turn, on the quantized model's own inputs.

The walk that the rounding passes (``adaround``, ``gptq``) share: a float
twin of the model on ``convert``'s grids (:func:`qcompile.quant.emulate.quantized_twin`)
runs the calibration samples beside the float graph; at each conv and
linear layer that ``convert`` quantizes, in graph order, a solver gets the
layer as a :class:`Layer` (its float weight, ``convert``'s grid for it, and
:class:`qcompile.quant.adaround.Rows` on the twin's inputs and the float
model's outputs) and returns codes on that grid. The walk keeps the codes
where they lower the layer's output error against round-to-nearest (else
nearest), runs the rest of the twin on the chosen weight (so later layers
see the earlier layers' rounding), and finally writes each chosen weight
back into the graph exactly on ``convert``'s grid, checked code for code.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
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
from qcompile.pipeline import STATICALLY_CONVERTED, Pass, PassContext, first_providing
from qcompile.quant.adaround import Rows, WeightGrid, reconstruction_error, sampled_rows, weight_grid
from qcompile.quant.emulate import quantized_twin
from qcompile.quant.integer_weights import integer_weight
from qcompile.quant.op_table import WEIGHTED


@dataclass(frozen=True)
class Layer:
    """One layer for a solver: ``rows.inputs`` are the twin's (earlier layers already rounded)."""

    node: Node
    module: torch.nn.Module
    weight: torch.Tensor
    grid: WeightGrid
    rows: Rows
    seconds: float | None  # this layer's share of the time budget, None without one
    generator: torch.Generator  # the walk's, seeded once: the rows drawn and a solver's own draws share it
    float_inputs: torch.Tensor | None = None  # with float_inputs=True: the float model's at the same rows


@dataclass(frozen=True)
class Walked:
    """What the walk did: layers given codes, layers left at nearest for lack of time, and per layer the
    share of output error removed against nearest and the share of codes that differ from nearest."""

    rounded: int
    out_of_time: int
    gains: list[float]
    changed: list[float]

    def stats(self) -> dict[str, object]:
        mean_gain = sum(self.gains) / len(self.gains) if self.gains else 0.0
        changed = f"{sum(self.changed) / len(self.changed):.1%}" if self.changed else "0%"
        return {"layers": self.rounded, "left at nearest (budget)": self.out_of_time,
                "output error vs nearest": f"-{mean_gain:.0%}", "weights flipped": changed}


def following_convert(ctx: PassContext, name: str) -> Pass:
    """The ``convert`` after pass ``name`` whose integer weights it rounds; an error naming the fix if none."""
    target = first_providing(ctx.remaining_passes, STATICALLY_CONVERTED)
    if target is None:
        raise QCompileError(f"'{name}' chooses the rounding of the integer weights that a later convert "
                            "pass makes, and none follows it",
                            hint=f"put it before convert, e.g. fuse,calibrate,{name},convert")
    return target


def activation_of(node: Node):
    return resolve_target(FUSED_ACTIVATIONS[node.act]) if node.act else None


def _layer_function(module: torch.nn.Module, node: Node):
    """``f(x, w)``: the layer on ``x`` with weight ``w`` and its own bias, then its fused activation."""
    activation = activation_of(node)

    def layer(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        out = functional_call(module, {"weight": weight}, (x,), strict=False)
        return activation(out) if activation is not None else out

    return layer


def walk_layers(graph: Graph, ctx: PassContext, owner: Pass, target: Pass, solve: Callable[[Layer], torch.Tensor],
                *, samples: int, positions: int, seed: int, budget: float = 0.0,
                float_inputs: bool = False) -> Walked:
    """Give each weighted layer that ``target`` (a ``convert``) quantizes the codes ``solve`` chooses (see the
    module docstring). ``owner`` names the pass in errors and progress; with ``budget`` (seconds), layers
    reached after it is spent keep round-to-nearest; with ``float_inputs``, each :class:`Layer` also holds the
    float model's inputs to the layer at the same rows."""
    inputs = calibration_samples(ctx.calib_data, samples, owner.name)
    decided, layers = rounded_layers(graph, target)
    twin = quantized_twin(graph, target, ctx)
    twin_run = Interpreter(twin)
    feeding = {twin.inputs(twin.node(name))[0].name for name in layers}
    float_feeding = {graph.inputs(graph.node(name))[0].name for name in layers}
    float_steps = Interpreter(graph).steps(*inputs)
    float_stash: dict[str, torch.Tensor] = {}  # the float model's values of the layers' inputs, as they pass
    stash: dict[str, torch.Tensor] = {}
    chosen: dict[str, torch.Tensor] = {}
    chosen_codes: dict[str, torch.Tensor] = {}
    gains: list[float] = []
    changed: list[float] = []
    generator = torch.Generator().manual_seed(seed)
    started = time.monotonic()
    solving = [0.0]  # seconds spent in solve

    def float_output(name: str) -> torch.Tensor:
        if name in float_stash:
            return float_stash[name]
        for node, value in float_steps:
            if float_inputs and node.name in float_feeding:
                float_stash[node.name] = value
            if node.name == name:
                return value
        raise PassError(f"{owner.name}: %{name} did not run in the float graph")

    def edit(node: Node, value: torch.Tensor):
        if node.name not in layers:
            return None
        target_output = float_output(node.name)
        if budget and time.monotonic() - started > budget:
            return None  # out of time: round to nearest, as the twin already does
        weight = graph.param(layers[node.name], "weight")
        grid = weight_grid(weight, decided.node(node.name).quant)
        x = stash[twin.inputs(node)[0].name]
        module = twin_run.module(node)
        drawn = generator.get_state()
        rows = sampled_rows(module, activation_of(node), x, target_output, positions, generator) \
            if positions else None
        if rows is None:  # whole samples: another kind of layer, or positions=0
            rows = Rows(x, target_output, _layer_function(module, node))
        float_rows = None
        if float_inputs:
            x_float = float_output(graph.inputs(graph.node(node.name))[0].name)
            if rows.inputs is x:
                float_rows = x_float
            else:  # the same positions, drawn again from the same state
                after = generator.get_state()
                generator.set_state(drawn)
                float_rows = sampled_rows(module, None, x_float, target_output, positions, generator).inputs
                generator.set_state(after)
        share = None  # with a budget: an equal share of what is left for each layer still to round, less
        if budget:  # the work around the solver (forward passes, patches), as it went per layer so far
            elapsed, left = time.monotonic() - started, len(layers) - len(chosen)
            around = (elapsed - solving[0]) / max(len(chosen), 1)
            share = (budget - elapsed - around * left) / left
        began = time.monotonic()
        codes = solve(Layer(node, module, weight, grid, rows, share, generator, float_rows))
        solving[0] += time.monotonic() - began
        nearest = grid.codes(weight)
        with torch.no_grad():
            errors = [float(reconstruction_error(rows.layer(rows.inputs, grid.values(c)), rows.targets))
                      for c in (nearest, codes)]
        if not all(map(math.isfinite, errors)):
            raise PassError(f"{owner.name}: the output error of %{node.name} is not finite")
        kept = codes if errors[1] <= errors[0] else nearest
        chosen[node.name], chosen_codes[node.name] = grid.values(kept), kept
        gains.append(1 - min(errors) / max(errors[0], 1e-30))
        changed.append(float((kept != nearest).double().mean()))
        ctx.progress(owner.name, len(chosen), len(layers))
        return functional_call(module, {"weight": chosen[node.name]}, (x,), strict=False)

    for node, value in twin_run.steps(*inputs, edit=edit):
        if node.name in feeding:
            stash[node.name] = value
    write_codes(graph, decided, {name: (chosen[name], chosen_codes[name]) for name in chosen}, owner)
    return Walked(len(chosen), len(layers) - len(chosen), gains, changed)


def rounded_layers(graph: Graph, target: Pass) -> tuple[Graph, dict[str, Node]]:
    """A copy of ``graph`` with the grids ``target`` (a ``convert``) decides, and the conv and linear layers
    whose weights it puts on a grid, by name, in graph order."""
    from qcompile.passes.convert import decide_grids

    decided = graph.copy()
    decide_grids(decided, target)
    layers = {n.name: n for n in graph.nodes() if n.kind == NodeKind.MODULE and n.op in WEIGHTED
              and n.quant.weight_stats is not None and decided.node(n.name).quant.weight_qparams is not None}
    return decided, layers


def write_codes(graph: Graph, decided: Graph, chosen: dict[str, tuple[torch.Tensor, torch.Tensor]],
                owner: Pass) -> None:
    """Write each chosen ``(weight, codes)`` into ``graph``, checked code for code against what ``convert``
    will make of the weight (the grids of ``decided``)."""
    for name, (weight, chosen_codes) in chosen.items():
        key = graph.node(name).params["weight"]
        graph.params[key] = weight.requires_grad_(graph.params[key].requires_grad)
        codes = integer_weight(weight, decided.node(name).quant).codes
        if not torch.equal(chosen_codes.to(codes.dtype), codes):  # convert must hold what was chosen
            raise PassError(f"{owner.name}: the chosen weight of %{name} is off convert's grid")
