"""ONNX export straight from the IR, in QDQ form.

Float graphs map op for op (Conv, Gemm, Relu, MaxPool, ...). Converted
(int8) graphs keep every tensor of the quantized region as the float value it
stands for, written as ``QuantizeLinear -> DequantizeLinear`` with the node's
scale and zero point; weights are int8 initializers behind a per-channel
``DequantizeLinear``, biases int32 in accumulator units (scale = input scale x
weight scale). onnxruntime fuses these patterns into its integer kernels
(QLinearConv and friends) when graph optimizations are on.

Shape arithmetic (``x.size(0)``, ``view(n, -1)``) becomes Shape / Gather /
Concat, so exported models keep a dynamic batch dimension.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from qcompile.errors import QCompileError
from qcompile.fileio import atomic_write_bytes
from qcompile.integer import ON_INTEGER_STAGE
from qcompile.ir.activations import activation_settings
from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind
from qcompile.ir.types import ScalarType, TensorType, TupleType
from qcompile.onnx import sequence_ops, tensor_ops, torch_written
from qcompile.onnx.builder import OPSET, Builder, param_value
from qcompile.onnx.constants import fold_constants
from qcompile.onnx.fused_dynamic import DYNAMIC_FORMS, MS_DOMAIN
from qcompile.onnx.gemmlowp import code_pad, gemmlowp_module, is_gemmlowp, pads_codes
from qcompile.onnx.inputs import check_dynamic_axes, graph_inputs
from qcompile.onnx.modules import (
    _POOL_ARGS,
    ACTIVATIONS,
    ADAPTIVE_POOLS,
    CONVS,
    _activation,
    _activation_op,
    _module,
    _pool,
    adaptive_pool,
    functional_layer,
)
from qcompile.onnx.outputs import graph_outputs
from qcompile.onnx.prune import prune_unused
from qcompile.onnx.resize import resize
from qcompile.quant.relu6_grid import relu6_top_code


def integer_relu6(b: Builder, node: Node, producer: Node, codes: str) -> str | None:
    """A ReLU6 that keeps its input's uint8 grid, as a Clip of the codes (None when it does not).

    ``QuantizeLinear(Clip(DequantizeLinear(q), 0, 6))`` equals
    ``Clip(q, zp, round(6 / s) + zp)`` on the codes, in one integer op that
    runtimes need not fuse; when the grid cannot hold values outside [0, 6]
    (zero point 0, 255 codes within 6) the clamp is dropped.
    """
    q, q_in = node.quant.qparams, producer.quant.qparams
    if (node.op != "relu6" or q is None or q_in is None or q.per_channel or q.dtype != "quint8"
            or q_in.dtype != "quint8" or float(q.scale) != float(q_in.scale)
            or int(q.zero_point) != int(q_in.zero_point)):
        return None
    zero, top = int(q.zero_point), relu6_top_code(q)
    if zero == 0 and top == 255:
        return codes
    return b.emit("Clip", [codes, b.const(f"{node.name}_lo", np.array(zero, np.uint8)),
                           b.const(f"{node.name}_hi", np.array(top, np.uint8))])


_COMPARISONS = {"eq": "Equal", "ne": "Equal", "lt": "Less", "gt": "Greater", "le": "LessOrEqual",
                "ge": "GreaterOrEqual"}  # ne: Not(Equal)
_BINARY = {"add": "Add", "mul": "Mul", "sub": "Sub", "div": "Div", "floor_divide": "Div", "pow": "Pow"} | _COMPARISONS


def _integer(value: Any) -> bool:
    """An int constant, an int scalar of the graph, or an int64 tensor."""
    if isinstance(value, Node):
        if isinstance(value.type, TensorType):
            return value.type.dtype == "i64"
        return getattr(value.type, "name", "") == "int"
    return isinstance(value, int) and not isinstance(value, bool)


def _binary(b: Builder, node: Node, args: list) -> str:
    """A binary op on tensors or on scalars (shape arithmetic such as ``x.size(1) // 2`` or ``c ** -0.5``).

    Scalars computed in the graph are int64 or float32 ONNX scalars. The op
    works in int64 where every operand is an integer (int constants, int
    scalars, int64 tensors; not a true division), otherwise in float32.
    """
    tensor = any(isinstance(v, Node) and isinstance(v.type, TensorType) for v in args)
    result_int = isinstance(node.type, ScalarType) and node.type.name == "int"
    # integers in, integers out (ids == 0, x.size(2) == 224, n // 2); a true division gives floats
    as_int = (all(_integer(v) for v in args) and node.op != "div"
              and (tensor or result_int or node.op in _COMPARISONS))
    dtype = np.int64 if as_int else np.float32
    values = []
    for v in args:
        if not isinstance(v, Node):
            values.append(b.const("scalar", np.array(v, dtype)))
        elif not isinstance(v.type, TensorType) and getattr(v.type, "name", "") in ("int", "bool") and not as_int:
            values.append(b.emit("Cast", [b.value(v)], to=TensorProto.FLOAT))
        else:
            values.append(b.value(v))
    out = b.emit(_BINARY[node.op], values)
    return b.emit("Not", [out]) if node.op == "ne" else out


def _call(b: Builder, node: Node) -> str | list[str]:
    args = b.args(node)
    kw = node.kwargs
    op = node.op
    several = args and isinstance(args[0], Node) and isinstance(b.names.get(args[0].name), list)  # chunk, split
    x = b.value(args[0]) if args and isinstance(args[0], Node) and not several else None
    if node.target.startswith("torch.ops.quantized."):
        name = node.target.rsplit(".", 1)[1]
        if name in ("add", "add_relu", "mul", "mul_relu"):
            out = b.emit(_BINARY[name.split("_")[0]], [b.value(args[0]), b.value(args[1])])
            return _activation(b, out, "relu" if name.endswith("relu") else None)
        if name == "cat":
            return b.emit("Concat", [b.value(t) for t in args[0]], axis=args[1])
        if name == "hardswish":
            return b.emit("HardSwish", [x])
        if name == "leaky_relu":  # (x, slope, inplace, scale, zero point)
            return b.emit("LeakyRelu", [x], alpha=float(args[1]))
    if op in _BINARY and len(args) == 2:
        return _activation(b, _binary(b, node, args), node.act)
    if op in ACTIVATIONS:
        return _activation_op(b, op, x, activation_settings(op, args[1:], kw))
    if op in (*CONVS, "linear") and node.kind == NodeKind.FUNCTION:  # F.conv2d / F.linear with their weights
        return functional_layer(b, node, x, args, kw)
    if op == "interpolate":
        return resize(b, node, x, dict(zip(("size", "scale_factor", "mode", "align_corners"), args[1:], strict=False))
                      | b.kwargs(node))
    if op == "flatten":
        start = args[1] if len(args) > 1 else kw.get("start_dim", 0)
        end = args[2] if len(args) > 2 else kw.get("end_dim", -1)
        return tensor_ops.flatten(b, x, len(args[0].type.shape), start, end)
    if op == "cat":
        dim = args[1] if len(args) > 1 else kw.get("dim", 0)
        return b.emit("Concat", [b.value(t) for t in args[0]], axis=dim)
    if op in ("view", "reshape", "_unsafe_view"):
        dims = args[1:] if len(args) > 2 or not isinstance(args[1], (list, tuple)) else list(args[1])
        shape = b.emit("Concat", [b.int_value(d) for d in dims], axis=0)
        return b.emit("Reshape", [x, shape])
    if op == "expand_as":
        return b.emit("Expand", [x, b.emit("Shape", [b.value(args[1])])])
    if op == "expand":  # torch's -1 keeps a size; ONNX's Expand broadcasts a 1 to the input's size
        dims = args[1:] if len(args) > 2 or not isinstance(args[1], (list, tuple)) else list(args[1])
        shape = b.emit("Concat", [b.int_value(1 if d == -1 else d) for d in dims], axis=0)
        return b.emit("Expand", [x, shape])
    if op == "dim":  # the rank: fixed in the file
        return b.const("rank", np.array(len(args[0].type.shape), np.int64))
    if op in ("size", "sym_size"):  # sym_size: torch.export's symbolic dimension
        shape = b.emit("Shape", [x])
        if len(args) > 1:
            return b.emit("Gather", [shape, b.const("index", np.array(args[1], np.int64))], axis=0)
        return shape
    if op == "getattr" and args[1] in ("values", "indices") and isinstance(b.names.get(args[0].name), list):
        return b.emit("Identity", [b.names[args[0].name][("values", "indices").index(args[1])]])  # x.max(1).values
    if op == "getattr" and args[1] == "shape":
        return b.emit("Shape", [x])
    if op == "index" and node.target.startswith("torch.ops.aten.index."):  # x[idx] under torch.export
        return sequence_ops.tensor_index(b, node, x, tuple(slice(None) if i is None else i for i in args[1]))
    if op == "getitem":
        source = args[0]
        if isinstance(b.names.get(source.name), list):
            element = b.names[source.name][args[1]]
            return element if isinstance(element, list) else b.emit("Identity", [element])  # (h, c) stays a pair
        if not isinstance(source.type, TensorType) and isinstance(args[1], int):
            return b.emit("Gather", [b.value(source), b.const("index", np.array(args[1], np.int64))], axis=0)
        if not isinstance(source.type, TensorType) and isinstance(args[1], slice):  # x.shape[-2:]
            part = args[1]
            bounds = [0 if part.start is None else part.start, np.iinfo(np.int64).max if part.stop is None
                      else part.stop, 0, 1 if part.step is None else part.step]
            return b.emit("Slice", [b.value(source), *(b.const("bound", np.array([v], np.int64)) for v in bounds)])
        if isinstance(source.type, TensorType):
            return sequence_ops.tensor_index(b, node, x, args[1])
    if op in ("transpose", "swapaxes", "swapdims", "permute"):
        rank = len(args[0].type.shape)
        if op != "permute":
            perm = list(range(rank))
            d0, d1 = (d % rank for d in args[1:3])
            perm[d0], perm[d1] = perm[d1], perm[d0]
        else:
            perm = list(args[1]) if isinstance(args[1], (list, tuple)) else list(args[1:])
        return b.emit("Transpose", [x], perm=perm)
    if op in ("contiguous", "clone") or (op in ("dropout", "feature_dropout", "alpha_dropout")
                                         and not (node.target.startswith("torch.ops.aten.") and len(args) > 2
                                                  and args[2] is True)):  # dropout in eval mode: the identity
        return b.emit("Identity", [x])
    if op == "masked_fill":  # (x, mask, value)
        value = b.const("fill", np.array(args[2], np.float32)) if not isinstance(args[2], Node) else b.value(args[2])
        return b.emit("Where", [b.value(args[1]), value, x])
    if op == "stochastic_depth" and not (args[3] if len(args) > 3 else kw.get("training", True)):
        return b.emit("Identity", [x])  # torchvision's, in eval mode: the input as it is
    if op == "chunk":
        chunks = args[1]
        dim = kw.get("dim", args[2] if len(args) > 2 else 0)
        outs = [b.fresh(f"{node.name}_{i}") for i in range(chunks)]
        b.emit("Split", [x], outs, axis=dim, num_outputs=chunks)
        return outs
    if op in ("split", "split_with_sizes") and isinstance(node.type, TupleType):  # sizes from the traced shapes
        dim = kw.get("dim", args[2] if len(args) > 2 else 0)
        sizes = [t.shape[dim] for t in node.type.elements]
        outs = [b.fresh(f"{node.name}_{i}") for i in range(len(sizes))]
        b.emit("Split", [x, b.const(f"{node.name}_sizes", np.array(sizes, np.int64))], outs, axis=dim)
        return outs
    if op in ADAPTIVE_POOLS:
        return adaptive_pool(b, node, x, args[1] if len(args) > 1 else kw["output_size"],
                             bool(args[2] if len(args) > 2 else kw.get("return_indices", False)))
    if op in _POOL_ARGS:
        return _pool(b, op, x, dict(zip(_POOL_ARGS[op], args[1:], strict=False)) | kw)
    if op in sequence_ops.FUNCTION_OPS:
        return sequence_ops.function_op(b, node, args, kw)
    if op in tensor_ops.FUNCTION_OPS:
        return tensor_ops.function_op(b, node, args, kw)
    if torch_written.writes(node):  # any other float op: as torch's own exporter writes it
        return torch_written.torch_written(b, node)
    raise QCompileError(f"%{node.name}: {node.target} is not exported to ONNX yet",
                        hint="keep that op out of the export, or extend qcompile.onnx.export")


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
            value = gemmlowp_module(b, node, b.value(b.args(node)[0]))
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
            value = _call(b, node)
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
            file). Outputs are the same (:mod:`qcompile.onnx.narrow_convs`).
        dynamic: dynamically quantized linears and LSTMs: ``exact`` rounds as
            torch's int8 kernels (the emitted model) do; ``fused`` is
            onnxruntime's ``DynamicQuantizeMatMul`` / ``DynamicQuantizeLSTM``,
            faster, rounding its own way with 7-bit weights, onnxruntime only
            (:mod:`qcompile.onnx.fused_dynamic`).
        built: the model :func:`build_onnx` already made of ``graph`` with
            these settings (a caller that built it to refuse early), so
            that it is not built twice.
    """
    from qcompile.onnx.narrow_convs import relayout_narrow_convs

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
