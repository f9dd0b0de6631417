"""``stubs``: mark the quantizable region and put quantize / dequantize at its borders.

requires: ``lowered``    provides: ``stubbed``

A node joins the region when its op has a quantized form (see
:mod:`qcompile.quant.op_table`) and the quantization config does not skip it;
ops that only move values (pooling, flatten, reshape...) join when their
input is already quantized. A pure move of a float value (reshape,
transpose, max pooling...) whose every reader is inside the region joins it
too: quantizing before the move equals quantizing after it (same grid), and
a float value read both by the region and through such a move then gets one
``quantize``, not two. Every float value read inside the region gets
one ``quantize`` node; every quantized value read outside it (including the
model's output) gets one ``dequantize`` node. Skipped layers therefore stay
float with the stubs around them: partial quantization. A SiLU it quantizes
becomes ``x * sigmoid(x)`` first (:mod:`qcompile.quant.decompose`). On ResNet-18::

    %x     = input() : f32[1,3,224,224]
    %conv1 = conv2d(%x, ...) : f32[1,64,112,112]

    %x          = input() : f32[1,3,224,224]
    %quantize_x = quantize(%x) : f32[1,3,224,224] {target='qcompile.nn.stubs.QuantStub'}  # mode=static
    %conv1      = conv2d(%quantize_x, ...) : f32[1,64,112,112]  # mode=static

The quantization config (preset, skips, overrides) comes from the pass
context (``ctx.quant_config``).
"""

from __future__ import annotations

from dataclasses import dataclass

from qcompile.backends.torch_ao.transposed_probe import transposed_kernel_ok
from qcompile.errors import QCompileError
from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind
from qcompile.ir.types import TensorType
from qcompile.pipeline import FLOAT_GRAPH_ONLY, Pass, PassContext, PassResult, register_pass
from qcompile.quant.decompose import decompose_silu
from qcompile.quant.op_table import TRANSPOSED, category, holds_tensor, is_float_tensor

QUANT_STUB = "qcompile.nn.stubs.QuantStub"
DEQUANT_STUB = "qcompile.nn.stubs.DeQuantStub"


def float_reason(graph: Graph, node: Node, quantized: set[str], ctx: PassContext) -> str | None:
    """Why ``node`` stays out of the region (``None``: it joins it), in words a user can act on."""
    cat = category(graph, node)
    if cat is None:
        return "no quantized form for this op"
    if ctx.quant_config.qconfig_for(node) is None:
        return "skipped by the config (--skip or the qconfig file)"
    if cat == "shared":
        inputs = graph.inputs(node)
        return None if inputs and inputs[0].name in quantized else "moves a float value"
    if node.op in TRANSPOSED:
        engine = ctx.quant_config.engine
        ok, sqnr = transposed_kernel_ok(node.op, node.attrs, engine)
        if not ok:
            return (f"torch's int8 kernel on the {engine} engine computes this configuration wrongly (probed at "
                    f"{sqnr:.1f} dB SQNR against float on the same codes)")
    return None


def region_member(graph: Graph, node: Node, quantized: set[str], ctx: PassContext) -> bool:
    reason = float_reason(graph, node, quantized, ctx)
    if reason is not None and isinstance(node.type, TensorType) and node.kind in _COMPUTE:
        ctx.explain(f"%{node.name} ({node.op}) stays float: {reason}")
    return reason is None


_COMPUTE = (NodeKind.MODULE, NodeKind.FUNCTION, NodeKind.METHOD)


# moves that commute exactly with quantization on a shared grid (max commutes: rounding is monotone)
MOVES = {"flatten", "view", "reshape", "permute", "transpose", "contiguous", "squeeze", "unsqueeze", "identity",
         "dropout", "max_pool1d", "max_pool2d", "max_pool3d"}


def _pull_in_moves(graph: Graph, quantized: set[str], ctx: PassContext) -> None:
    """Float moves whose readers are all in the region join it (last first, so that chains of moves join)."""
    for node in reversed(list(graph.nodes())):
        inputs, readers = graph.inputs(node), graph.users(node)
        if (node.name in quantized or node.quant.mode is not None or node.op not in MOVES
                or category(graph, node) != "shared" or ctx.quant_config.qconfig_for(node) is None
                or not inputs or not is_float_tensor(inputs[0]) or not readers
                or any(r.name not in quantized for r in readers)):
            continue
        quantized.add(node.name)


def _stub(graph: Graph, producer: Node, target: str, op: str) -> Node:
    return graph.add_node(op, NodeKind.MODULE, [producer], name=f"{op}_{producer.name}",
                          target=target, attrs={}, type=producer.type,
                          source=producer.source, after=producer)


@register_pass(default_for=("stubbed",))
@dataclass(frozen=True)
class Stubs(Pass):
    """Mark the quantizable region and insert quantize/dequantize at its borders."""

    name = "stubs"
    requires = ("lowered",)
    provides = ("stubbed",)
    forbids = FLOAT_GRAPH_ONLY

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        dynamic = [n for n in graph.nodes() if n.quant.mode == "dynamic" and n.op in ("linear", "lstm", "gru")]
        if dynamic:  # their weights are torch's packed int8 now: static quantization cannot observe them
            raise QCompileError(
                f"static quantization after dynamic quantization of {dynamic[0].op} layers (%{dynamic[0].name})",
                hint="put dynamic after convert (e.g. ptq,dynamic), or give it ops=embedding before")
        ctx.quant_config.check_patterns(graph.nodes())
        silu = decompose_silu(graph, lambda node: ctx.quant_config.qconfig_for(node) is not None)
        quantized: set[str] = set()
        for node in graph.nodes():
            if node.quant.mode is None and region_member(graph, node, quantized, ctx):
                quantized.add(node.name)
        _pull_in_moves(graph, quantized, ctx)
        if not quantized:
            ctx.explain("nothing to quantize")
            return PassResult(False)
        quant_stubs: dict[str, Node] = {}
        dequant_stubs: dict[str, Node] = {}
        for node in graph.nodes():
            inside = node.name in quantized
            if not inside and node.kind != NodeKind.OUTPUT and not holds_tensor(node.type):
                continue  # size(), shape arithmetic: read int8 and float tensors alike
            for port, producer in enumerate(graph.inputs(node)):
                if not is_float_tensor(producer):
                    continue  # shapes and other non-tensors cross freely
                if inside and producer.name not in quantized:
                    stub = quant_stubs.get(producer.name)
                    if stub is None:
                        stub = quant_stubs[producer.name] = _stub(graph, producer, QUANT_STUB, "quantize")
                        stub.quant.mode = "static"
                    graph.set_input(node, port, stub)
                elif not inside and producer.name in quantized:
                    stub = dequant_stubs.get(producer.name)
                    if stub is None:
                        stub = dequant_stubs[producer.name] = _stub(graph, producer, DEQUANT_STUB, "dequantize")
                    graph.set_input(node, port, stub)
        for name in quantized:
            graph.node(name).quant.mode = "static"
        stats = {"quantized ops": len(quantized), "quantize": len(quant_stubs), "dequantize": len(dequant_stubs)}
        if silu:
            stats["silu as x * sigmoid(x)"] = silu
        float_ops: dict[str, int] = {}
        for node in graph.nodes():
            if (node.name not in quantized and isinstance(node.type, TensorType) and node.kind in _COMPUTE
                    and node.op not in ("quantize", "dequantize")):
                float_ops[node.op] = float_ops.get(node.op, 0) + 1
                if node.quant.mode is None:
                    node.quant.float_reason = float_reason(graph, node, quantized, ctx)
        if float_ops:
            # the ops that run in float between dequantize/quantize, most frequent first
            stats["float"] = ", ".join(f"{op} x{n}" for op, n in sorted(float_ops.items(), key=lambda i: -i[1]))
        return PassResult(True, stats)
