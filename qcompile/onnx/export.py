"""ONNX export straight from the IR, in QDQ form.

Float graphs map op for op (Conv, Gemm, Relu, MaxPool, ...). Converted
(int8) graphs keep every tensor of the quantized region as the float value it
stands for, written as ``QuantizeLinear -> DequantizeLinear`` with the node's
scale and zero point; weights are int8 initializers behind a per-channel
``DequantizeLinear``, biases int32 in accumulator units (scale = input scale x
weight scale). onnxruntime fuses these patterns into its integer kernels
(QLinearConv and friends) when graph optimizations are on.

The driver below walks the graph once: inputs, folded constants,
parameters, then each node through the writer for its kind: the integer
stage's modules (:mod:`.gemmlowp`), torch.nn modules (:mod:`.modules`), or a
call (:mod:`.calls`: torch's quantized ops, then the emitters registered by
op name in :mod:`.registry`, then torch's own exporter); quantized values
get their QDQ pair. The QOperator form is :mod:`.qoperator`; running and
checking the result in onnxruntime is :mod:`qcompile.onnx.runtime`.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper

from qcompile.errors import QCompileError
from qcompile.fileio import atomic_write_bytes
from qcompile.integer import ON_INTEGER_STAGE
from qcompile.ir.graph import Graph
from qcompile.ir.node import NodeKind
from qcompile.ir.types import TensorType
from qcompile.onnx.builder import OPSET, Builder, param_value
from qcompile.onnx.calls import call, integer_relu6
from qcompile.onnx.constants import fold_constants
from qcompile.onnx.fused_dynamic import DYNAMIC_FORMS, MS_DOMAIN
from qcompile.onnx.gemmlowp import code_pad, gemmlowp_module, is_gemmlowp, pads_codes
from qcompile.onnx.inputs import check_dynamic_axes, graph_inputs
from qcompile.onnx.modules import CONVS, _activation, _module
from qcompile.onnx.outputs import graph_outputs
from qcompile.onnx.prune import prune_unused


def to_onnx(graph: Graph, opset: int = OPSET, dynamic: str = "exact") -> onnx.ModelProto:
    """The graph as an ONNX model (QDQ form for converted graphs); checked by onnx.checker."""
    b = Builder(graph, opset, int4=opset >= 21, dynamic=dynamic)
    inputs, outputs = graph_inputs(graph), []
    constants = fold_constants(graph)
    for node in graph.nodes():
        if node.kind == NodeKind.INPUT:
            b.names[node.name] = node.name
            continue
        if b.folded(node, constants):
            continue
        if node.kind == NodeKind.OUTPUT:
            outputs = graph_outputs(b)
            continue
        if node.kind == NodeKind.PARAM:
            b.names[node.name] = b.const(node.name, param_value(graph.params[node.target]))
            continue
        if node.op == "_assert":  # torch._assert (a shape check traced from forward): ONNX has no assertions
            continue
        producers = graph.inputs(node)
        if node.op == "relu6" and producers and producers[0].name in b.codes:
            codes = integer_relu6(b, node, producers[0], b.codes[producers[0].name])
            if codes == b.codes[producers[0].name]:  # a clamp the grid makes redundant
                b.codes[node.name], b.names[node.name] = codes, b.names[producers[0].name]
                continue
            if codes is not None:  # on the codes, with no float Clip between Quantize and DequantizeLinear
                b.codes[node.name], b.names[node.name] = codes, b.dequantize(codes, node)
                continue
        if node.kind == NodeKind.MODULE and is_gemmlowp(node):  # plain integer tensors: qcompile.onnx.gemmlowp
            value = gemmlowp_module(b, node, b.value(graph.inputs(node)[0]))
        elif pads_codes(b, node):
            value = code_pad(b, node, b.value(b.args(node)[0]))
        elif node.kind == NodeKind.MODULE:
            args = b.args(node)
            value = _module(b, node, b.value(args[0]))
            if node.op not in (*CONVS, "linear"):
                value = _activation(b, value, node.act)
            elif "torch.nn." in node.target:
                value = _activation(b, value, node.act)
        else:
            value = call(b, node)
        if isinstance(value, str) and node.quant.mode == "static" and isinstance(node.type, TensorType):
            value = b.qdq(value, node)
        b.names[node.name] = value
    nodes, initializers = prune_unused(b.nodes, b.initializers, [o.name for o in outputs])
    model = helper.make_model(
        helper.make_graph(nodes, graph.name, inputs, outputs, initializers),
        opset_imports=opset_imports(nodes, opset), producer_name="qcompile")
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def opset_imports(nodes: list[onnx.NodeProto], opset: int) -> list[onnx.OperatorSetIdProto]:
    """ONNX's opset, and onnxruntime's contrib domain where a node is from it."""
    imports = [helper.make_opsetid("", opset)]
    if any(n.domain == MS_DOMAIN for n in nodes):
        imports.append(helper.make_opsetid(MS_DOMAIN, 1))
    return imports


def check_exportable(backend: str | None, form: str = "qdq") -> None:
    """Refuse a graph on ``backend`` the exporter does not write in ``form``: gemmlowp graphs export in QDQ form
    only. The CLI asks with the pipeline's backend before anything runs."""
    if backend in ON_INTEGER_STAGE and form != "qdq":
        raise QCompileError(f"graphs on the {'integer stage' if backend == 'reference' else 'gemmlowp backend'} "
                            "export in QDQ form only",
                            hint="use --onnx-form qdq (onnxruntime fuses it into the same integer kernels)")


def build_onnx(graph: Graph, opset: int = OPSET, form: str = "qdq", dynamic: str = "exact") -> onnx.ModelProto:
    """The graph as an in-memory ONNX model in ``form``, checked; nothing is written or timed (a graph
    with dynamic axes runs once in onnxruntime, at another size: :mod:`qcompile.onnx.inputs`).

    Raises:
        QCompileError: if the graph holds something the exporter does not
            take (so a caller can refuse before writing any output).
    """
    if form not in ("qdq", "qoperator"):
        raise QCompileError(f"unknown ONNX form {form!r}", hint="qdq or qoperator")
    check_exportable(graph.attrs.get("backend"), form)
    if dynamic not in DYNAMIC_FORMS:
        raise QCompileError(f"unknown form of dynamically quantized ops {dynamic!r}", hint=" or ".join(DYNAMIC_FORMS))
    from qcompile.onnx.qoperator import to_onnx_qoperator

    model = to_onnx(graph, opset, dynamic) if form == "qdq" else to_onnx_qoperator(graph, opset, dynamic)
    check_dynamic_axes(model, graph)
    return model


def export_onnx(graph: Graph, path: str | Path, opset: int = OPSET, form: str = "qdq",
                narrow_convs: str = "auto", threads: int = 1, batch: int = 1, dynamic: str = "exact",
                built: onnx.ModelProto | None = None) -> Path:
    """Write ``graph`` as a self-contained ONNX file (atomically).

    Args:
        form: ``qdq`` (float ops between Quantize/DequantizeLinear; any graph) or
            ``qoperator`` (QLinearConv and friends; converted graphs only).
        narrow_convs: int8 convolutions over channels not a multiple of 4 (a
            network's first): ``auto`` rewrites them (padded, or space-to-depth)
            where onnxruntime runs the layer measurably faster on this machine
            (timed with ``threads``); ``measure`` where the whole model runs
            measurably faster at ``batch`` and ``threads``; ``pad`` or
            ``space-to-depth`` always; ``plain`` never (a machine-independent
            file). Outputs are the same (:mod:`qcompile.onnx.runtime.narrow_convs`).
        dynamic: dynamically quantized linears and LSTMs: ``exact`` rounds as
            torch's int8 kernels (the emitted model) do; ``fused`` is
            onnxruntime's ``DynamicQuantizeMatMul`` / ``DynamicQuantizeLSTM``,
            faster, rounding its own way with 7-bit weights, onnxruntime only
            (:mod:`qcompile.onnx.fused_dynamic`).
        built: the model :func:`build_onnx` already made of ``graph`` with
            these settings (a caller that built it to refuse early), so
            that it is not built twice.
    """
    from qcompile.onnx.runtime.narrow_convs import relayout_narrow_convs

    model = built if built is not None else build_onnx(graph, opset, form, dynamic)
    if any(r.choice != "plain" for r in relayout_narrow_convs(model, narrow_convs, threads, batch)):
        nodes, initializers = prune_unused(list(model.graph.node), list(model.graph.initializer),
                                           [o.name for o in model.graph.output])
        del model.graph.node[:], model.graph.initializer[:]
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(initializers)
        onnx.checker.check_model(model, full_check=True)
    return atomic_write_bytes(path, model.SerializeToString())


__all__ = ["build_onnx", "check_exportable", "export_onnx", "to_onnx"]
