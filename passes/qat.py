"""Quantization-aware training: ``qat`` prepares, ``train`` trains, ``qat-finalize`` hands over to ``convert``.

``qat``  requires: ``lowered``  provides: ``qat-prepared``

Run on the unfused graph, so BatchNorm stays a layer of its own and keeps
training. Every tensor the int8 model will quantize gets a ``fake_quantize``
node (a moving-average range and a straight-through round trip); convs and
linears in the region become ``QATConv1d/2d/3d`` / ``QATLinear``, whose
weights are fake-quantized per channel in each forward (as the preset says),
and transposed convs ``QATConvTranspose1d/2d/3d``, with one weight scale, as
``convert`` will quantize them::

    %conv1 = conv2d(%x, ...)   %bn1 = batch_norm2d(%conv1, ...)   %relu = relu(%bn1)

    %fake_quantize_x = fake_quantize(%x) ...
    %conv1 = conv2d(%fake_quantize_x, ...) {target='qcompile.nn.qat.QATConv2d', ...}
    %bn1 = batch_norm2d(%conv1, ...)   %relu = relu(%bn1)   %fake_quantize_relu = fake_quantize(%relu) ...

``train{epochs=1 lr=0.01 momentum=0.9}``  requires: ``qat-prepared``  provides: ``trained``

The built-in loop (SGD, cross-entropy) on ``ctx.train_data``; a user's own
loop uses :mod:`qcompile.training` instead.

``qat-finalize``  requires: ``qat-prepared``  provides: ``fused``, ``stubbed``, ``observed``, ``calibrated``

Turns the QAT modules back into float ones, folds the trained BatchNorm
statistics into the weights, and hands each learned fake-quant range to the
value it guarded, so ``convert`` builds the integer model from what training
learned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from qcompile.passes.calibrate import observe_weights
from qcompile.passes.fuse import Fuse
from qcompile.passes.observe import Observe
from qcompile.passes.stubs import Stubs

from qcompile.errors import QCompileError
from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind
from qcompile.pipeline import FLOAT_GRAPH_ONLY, Pass, PassContext, PassResult, option, register_pass
from qcompile.quant.op_table import TRANSPOSED, WEIGHTED
from qcompile.training import fit

FAKE_QUANT = "qcompile.nn.qat.FakeQuantize"
_QAT_MODULES = {"linear": ("torch.nn.Linear", "qcompile.nn.qat.QATLinear"),
                **{f"conv{d}d": (f"torch.nn.Conv{d}d", f"qcompile.nn.qat.QATConv{d}d") for d in (1, 2, 3)},
                **{f"conv_transpose{d}d": (f"torch.nn.ConvTranspose{d}d", f"qcompile.nn.qat.QATConvTranspose{d}d")
                   for d in (1, 2, 3)}}


def _chain_end(graph: Graph, node: Node, gone: set[str]) -> Node:
    """Follow ``node``'s sole consumers through the nodes fusion removed (BN, ReLU)."""
    while True:
        users = graph.users(node)
        if len(users) != 1 or users[0].name not in gone:
            return node
        node = users[0]


def _fake_quant(graph: Graph, producer: Node, spec) -> Node:
    qmin, qmax = spec.quant_range
    base = producer.source.module_path or producer.name
    params = {"min_val": graph.add_param(f"{base}.fq.min_val", torch.tensor(float("inf"))),
              "max_val": graph.add_param(f"{base}.fq.max_val", torch.tensor(float("-inf")))}
    node = graph.add_node("fake_quantize", NodeKind.MODULE, [producer], name=f"fake_quantize_{producer.name}",
                          target=FAKE_QUANT, params=params, type=producer.type, source=producer.source,
                          after=producer,
                          attrs={"quant_min": qmin, "quant_max": qmax, "symmetric": spec.symmetric,
                                 "averaging_constant": spec.averaging_constant})
    node.quant.mode = "qat"
    return node


@register_pass
@dataclass(frozen=True)
class Qat(Pass):
    """Insert fake quantization where the int8 model will quantize; keep BatchNorm trainable."""

    name = "qat"
    requires = ("lowered",)
    provides = ("qat-prepared",)
    forbids = FLOAT_GRAPH_ONLY

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if "qat-prepared" in graph.facts:
            return PassResult(False)
        # Plan on a fused, stubbed copy: it says which values the int8 model quantizes.
        plan = graph.copy()
        Fuse().run(plan, ctx)
        Stubs().run(plan, ctx)
        gone = {n.name for n in graph.nodes()} - {n.name for n in plan.nodes()}
        guarded: dict[str, Node] = {}
        for node in plan.nodes():
            if node.quant.mode != "static":
                continue
            spec = (ctx.quant_config.qconfig_for(node) or ctx.quant_config.qconfig).activation
            if node.op == "quantize":
                producer = graph.node(plan.inputs(node)[0].name)
                inside = {u.name for u in plan.users(node)}
                if producer.name not in guarded:
                    guarded[producer.name] = _fake_quant(graph, producer, spec)
                for user, port in graph.uses(producer):
                    if user.name in inside:
                        graph.set_input(user, port, guarded[producer.name])
            elif (node.op in (*WEIGHTED, *TRANSPOSED, "add", "mul", "cat", "hardswish", "leaky_relu")
                  and node.kind != NodeKind.PARAM):
                end = _chain_end(graph, graph.node(node.name), gone)
                if end.name not in guarded:
                    uses = graph.uses(end)
                    guarded[end.name] = fq = _fake_quant(graph, end, spec)
                    for user, port in uses:
                        graph.set_input(user, port, fq)
        converted = 0
        planned = {n.name: n for n in plan.nodes()}
        for node in graph.find(kind=NodeKind.MODULE):
            plan_node = planned.get(node.name)
            if node.op in _QAT_MODULES and plan_node is not None and plan_node.quant.mode == "static":
                node.target = _QAT_MODULES[node.op][1]
                # torch's int8 transposed convolutions take one weight scale, whatever the preset says
                node.attrs["weight_per_channel"] = (node.op not in TRANSPOSED
                                                    and ctx.quant_config.qconfig.weight.per_channel)
                node.quant.mode = "qat"
                converted += 1
        return PassResult(bool(guarded), {"fake_quantize": len(guarded), "qat modules": converted})


@register_pass
@dataclass(frozen=True)
class Train(Pass):
    """Train the graph with the built-in loop (SGD + cross-entropy) on ctx.train_data."""

    name = "train"
    requires = ("qat-prepared",)
    provides = ("trained",)
    forbids = FLOAT_GRAPH_ONLY

    epochs: int = option(1, low=1)
    lr: float = option(0.01, above=0)
    momentum: float = option(0.9, low=0, high=0.999)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        data = getattr(ctx, "train_data", None)
        if data is None:
            raise QCompileError("'train' needs labelled training data", hint="pass --train DATA")
        history = fit(graph, data, epochs=self.epochs, lr=self.lr, momentum=self.momentum,
                      progress=ctx.progress, log=ctx.log, world=ctx.world)
        return PassResult(True, {"epochs": self.epochs, "final loss": round(history[-1]["loss"], 4),
                                 "train accuracy": round(history[-1]["accuracy"], 4)})


@register_pass
@dataclass(frozen=True)
class QatFinalize(Pass):
    """Fold trained BatchNorm, drop fake quantization, keep its learned ranges for convert."""

    name = "qat-finalize"
    requires = ("qat-prepared",)
    provides = ("fused", "stubbed", "observed", "calibrated")
    forbids = FLOAT_GRAPH_ONLY

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        for node in graph.find(kind=NodeKind.MODULE):
            if node.quant.mode == "qat" and node.op in _QAT_MODULES:
                node.target = _QAT_MODULES[node.op][0]
                node.attrs.pop("weight_per_channel", None)
                node.quant.mode = None
        Fuse().run(graph, ctx)
        ranges: dict[str, tuple[float, float]] = {}
        for fq in graph.find(op="fake_quantize"):
            lo, hi = float(graph.param(fq, "min_val")), float(graph.param(fq, "max_val"))
            producer = graph.inputs(fq)[0]
            if not (lo <= hi):
                raise QCompileError(f"%{fq.name} never saw data: train (or calibrate) before qat-finalize")
            ranges[producer.name] = (lo, hi)
            graph.replace_all_uses(fq, producer)
            graph.erase(fq)
        Stubs().run(graph, ctx)
        Observe(activation_grid="preset").run(graph, ctx)  # the grids training learned, whatever the backend
        for node in graph.nodes():
            source = graph.inputs(node)[0].name if node.op == "quantize" else node.name
            if node.quant.observer is not None and source in ranges:
                node.quant.clip = ranges[source]
        missing = [n.name for n in graph.nodes() if n.quant.observer is not None and n.quant.clip is None]
        if missing:
            raise QCompileError(f"no trained range for {missing[:5]}", hint="run calibrate instead of qat-finalize")
        observe_weights(graph)
        return PassResult(True, {"ranges": len(ranges)})
