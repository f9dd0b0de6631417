"""ONNX export of converted graphs in QOperator form: integer tensors between integer ops.

Where the QDQ form keeps float tensors wrapped in Quantize/DequantizeLinear
and leaves fusion to the runtime, this form writes the integer operators
themselves: ``QLinearConv`` (also for linears, as a 1x1 convolution, so the
int32 bias is applied exactly as in a conv), and onnxruntime's
``com.microsoft`` ``QLinearAdd`` / ``QLinearMul`` / ``QLinearConcat`` /
``QLinearGlobalAveragePool`` / ``QLinearLeakyRelu``. Ops that only move values (max-pool, flatten,
reshape) run on the uint8 tensors directly; anything else is dequantized,
run in float and quantized again on its own grid.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from qcompile.backends.torch_ao.tensors import integer_codes, weight_grid
from qcompile.errors import QCompileError
from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind
from qcompile.ir.types import TensorType
from qcompile.onnx.builder import OPSET, Builder, param_value
from qcompile.onnx.calls import call, integer_relu6
from qcompile.onnx.constants import fold_constants
from qcompile.onnx.fused_dynamic import MS_DOMAIN as MS
from qcompile.onnx.inputs import graph_inputs
from qcompile.onnx.modules import CONVS, _module, _pair, conv_attrs
from qcompile.onnx.outputs import graph_outputs
from qcompile.onnx.prune import prune_unused
from qcompile.quant.qparams import quantize_bias

_MOVE_ONLY = {"max_pool2d", "flatten", "view", "reshape", "dropout", "identity", "contiguous", "transpose",
              "permute", "getitem", "chunk", "split", "split_with_sizes", "unflatten", "unsqueeze", "squeeze", "select"}


class _QBuilder(Builder):
    def int_weight(self, node: Node, as_conv: bool) -> list[str]:
        weight = self.graph.param(node, "weight")
        bias = self.graph.param(node, "bias")
        scales = weight_grid(weight)[0].float()
        w = integer_codes(weight)
        if as_conv and w.dim() == 2:
            w = w.reshape(*w.shape, 1, 1)
        x_scale = float(self.graph.inputs(node)[0].quant.qparams.scale)
        b = quantize_bias(bias, scales.double() * x_scale)
        return [self.const(f"{node.name}_w", w.numpy().astype(np.int8)),
                self.const(f"{node.name}_ws", scales.numpy().astype(np.float32)),
                self.const(f"{node.name}_wzp", np.zeros(len(scales), np.int8)),
                self.const(f"{node.name}_b", b.numpy())]


def _qlinear_conv(b: _QBuilder, node: Node, x: str, producer: Node) -> str:
    a = node.attrs
    x_s, x_zp = b.grid(producer)
    y_s, y_zp = b.grid(node)
    w, w_s, w_zp, bias = b.int_weight(node, as_conv=True)
    if node.op == "linear":
        rank = len(producer.type.shape)
        rows = x if rank == 2 else b.emit("Reshape", [x, b.const("rows", np.array([-1, a["in_features"]], np.int64))])
        x4 = b.emit("Unsqueeze", [rows, b.const("axes", np.array([2, 3], np.int64))])
        y4 = b.emit("QLinearConv", [x4, x_s, x_zp, w, w_s, w_zp, y_s, y_zp, bias], kernel_shape=[1, 1])
        y = b.emit("Squeeze", [y4, b.const("axes", np.array([2, 3], np.int64))])
        if rank == 2:
            return y
        leading = b.emit("Slice", [b.emit("Shape", [x]), b.const("start", np.array([0], np.int64)),
                                   b.const("end", np.array([rank - 1], np.int64))])
        shape = b.emit("Concat", [leading, b.const("width", np.array([a["out_features"]], np.int64))], axis=0)
        return b.emit("Reshape", [y, shape])  # [..., in] -> rows -> [..., out]
    return b.emit("QLinearConv", [x, x_s, x_zp, w, w_s, w_zp, y_s, y_zp, bias], **conv_attrs(node))


def _float_island(b: _QBuilder, node: Node) -> str:
    """Dequantize the inputs, run the op in float, quantize on the node's grid."""
    originals = dict(b.names)
    for producer in b.graph.inputs(node):
        if producer.quant.qparams is not None and isinstance(producer.type, TensorType):
            s, zp = b.grid(producer)
            b.names[producer.name] = b.emit("DequantizeLinear", [originals[producer.name], s, zp])
    value = _module(b, node, b.value(b.args(node)[0])) if node.kind == NodeKind.MODULE else call(b, node)
    b.names.update(originals)  # the dequantized names were local to this op
    s, zp = b.grid(node)
    return b.emit("QuantizeLinear", [value, s, zp])


def _name_codes(nodes: list[onnx.NodeProto], codes: dict[str, object], keep: set[str]) -> None:
    """Each quantized node's codes renamed ``<node>_q__0``, as the QDQ form names its QuantizeLinear outputs,
    so that :mod:`qcompile.onnx.runtime.layer_agreement` can compare them with the graph's. A value several nodes
    share (a dropout passes its input on) keeps the first one's name; the graph's outputs keep theirs."""
    produced = {o for n in nodes for o in n.output}
    taken = produced | {i for n in nodes for i in n.input}
    renames: dict[str, str] = {}
    for node_name, value in codes.items():
        name = f"{node_name}_q__0"
        if (isinstance(value, str) and value in produced and value not in keep and value not in renames
                and name not in taken):
            renames[value] = name
            taken.add(name)
    for n in nodes:
        for field in (n.input, n.output):
            names = [renames.get(v, v) for v in field]
            del field[:]
            field.extend(names)


def _global_pool(b: _QBuilder, node: Node) -> bool:
    size = node.attrs["output_size"] if node.kind == NodeKind.MODULE else b.args(node)[1]
    return _pair(size) == [1, 1]


def to_onnx_qoperator(graph: Graph, opset: int = OPSET, dynamic: str = "exact") -> onnx.ModelProto:
    """A converted graph as an ONNX model of integer operators."""
    if "converted" not in graph.facts:
        raise QCompileError("QOperator export needs a converted (int8) graph", hint="use the QDQ form for others")
    b = _QBuilder(graph, opset, dynamic=dynamic)
    inputs, outputs = graph_inputs(graph), []
    constants = fold_constants(graph)
    node_codes: dict[str, str] = {}  # quantized graph node -> the uint8 value holding its codes
    for node in graph.nodes():
        producers = graph.inputs(node)
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
        if node.op == "quantize":
            s, zp = b.grid(node)
            b.names[node.name] = b.emit("QuantizeLinear", [b.value(producers[0]), s, zp])
            node_codes[node.name] = b.names[node.name]
            continue
        if node.op == "dequantize":
            s, zp = b.grid(producers[0])
            b.names[node.name] = b.emit("DequantizeLinear", [b.value(producers[0]), s, zp])
            continue
        if node.quant.mode != "static" or not isinstance(node.type, TensorType):
            b.names[node.name] = call(b, node) if node.kind != NodeKind.MODULE else _module(b, node, b.value(producers[0]))
            continue
        target = node.target.rsplit(".", 1)[-1]
        if node.op in (*CONVS, "linear") and node.kind == NodeKind.MODULE:
            if "ReLU" in target and int(node.quant.qparams.zero_point) != 0:
                raise QCompileError(f"%{node.name}: fused ReLU with a non-zero output zero point")
            b.names[node.name] = _qlinear_conv(b, node, b.value(producers[0]), producers[0])
        elif target in ("add", "add_relu", "mul", "mul_relu") and node.target.startswith("torch.ops.quantized"):
            if target.endswith("relu") and int(node.quant.qparams.zero_point) != 0:
                raise QCompileError(f"%{node.name}: fused ReLU with a non-zero output zero point")
            a_s, a_zp = b.grid(producers[0])
            c_s, c_zp = b.grid(producers[1])
            y_s, y_zp = b.grid(node)
            op = "QLinearAdd" if target.startswith("add") else "QLinearMul"
            b.names[node.name] = b.emit(op, [b.value(producers[0]), a_s, a_zp, b.value(producers[1]), c_s, c_zp,
                                             y_s, y_zp], domain=MS)
        elif node.target == "torch.ops.quantized.cat":
            y_s, y_zp = b.grid(node)
            parts = []
            for producer in producers:
                s, zp = b.grid(producer)
                parts += [b.value(producer), s, zp]
            b.names[node.name] = b.emit("QLinearConcat", [y_s, y_zp, *parts], domain=MS, axis=b.args(node)[1])
        elif node.op == "adaptive_avg_pool2d" and _global_pool(b, node):
            x_s, x_zp = b.grid(producers[0])
            y_s, y_zp = b.grid(node)
            b.names[node.name] = b.emit("QLinearGlobalAveragePool", [b.value(producers[0]), x_s, x_zp, y_s, y_zp],
                                        domain=MS, channels_last=0)
        elif node.target == "torch.ops.quantized.leaky_relu":  # (x, slope, inplace, scale, zero point)
            x_s, x_zp = b.grid(producers[0])
            y_s, y_zp = b.grid(node)
            b.names[node.name] = b.emit("QLinearLeakyRelu", [b.value(producers[0]), x_s, x_zp, y_s, y_zp], domain=MS,
                                        alpha=float(b.args(node)[1]))
        elif node.op == "relu6" and (codes := integer_relu6(b, node, producers[0], b.value(producers[0]))):
            b.names[node.name] = codes
        elif node.op in _MOVE_ONLY:
            value = call(b, node) if node.kind != NodeKind.MODULE else _module(b, node, b.value(producers[0]))
            b.names[node.name] = value
        else:
            b.names[node.name] = _float_island(b, node)
        node_codes[node.name] = b.names[node.name]
    nodes, initializers = prune_unused(b.nodes, b.initializers, [o.name for o in outputs])
    _name_codes(nodes, node_codes, {o.name for o in outputs})
    model = helper.make_model(
        helper.make_graph(nodes, graph.name, inputs, outputs, initializers),
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)], producer_name="qcompile")
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model
