"""Graphs lowered for the ``gemmlowp`` backend, written in QDQ form from their plain integer tensors.

A graph converted with ``convert{backend=gemmlowp}`` (``ptq-accurate``, or
any pipeline on that backend), or left at the integer stage by
``integerize``, holds what its integer model computes as plain tensors
(:mod:`qcompile.integer.stage`): int8 weight codes, int32 biases
in accumulator units, output grids, and clamps on the codes. The writer reads
exactly those, never a torch quantized tensor: a weight's grid comes from its
annotation (:func:`qcompile.quant.integer_weights.weight_codes_grid`), the
bias from ``bias_q``. Every value between the model's quantize and dequantize
is written as the float value it stands for, behind ``QuantizeLinear ->
DequantizeLinear`` on its grid, as for the native backend, so onnxruntime
fuses the patterns into its integer kernels. Module by module::

    QConv2d / QLinear   DequantizeLinear(codes), DequantizeLinear(bias_q) -> Conv / MatMul + Add -> clamp
    QAdd / QMul         Add / Mul -> clamp
    QLookup             the input's codes -> Gather from the table -> DequantizeLinear (exact)
    QClamp              clamp
    QMaxPool2d          MaxPool
    QAvgPool2d          AveragePool
    QGlobalAvgPool      GlobalAveragePool
    QMean               ReduceMean over H and W
    QCat                Concat (the output's QDQ requantizes)
    Quantize, Dequantize  the model's grid at its ends (QDQ), Identity

where the clamp on codes ``[lo, hi]`` of a grid ``(s, z)`` is ``Relu`` when it
is ``[z, 255]`` and ``Clip(s (lo - z), s (hi - z))`` otherwise (nothing at all
for ``[0, 255]``: QuantizeLinear saturates there). A pad of the codes with the
zero point is a pad of the values with 0.

The integer model requantizes in gemmlowp's fixed point, onnxruntime in
float: the two agree within one step of the output grid, and ``--check``
holds the export to that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from onnx import TensorProto

from qcompile.backends.gemmlowp import KERNELS, REFERENCE
from qcompile.errors import QCompileError
from qcompile.integer import ON_INTEGER_STAGE
from qcompile.ir.node import Node
from qcompile.onnx.modules import _pool
from qcompile.onnx.tensor_ops import pad
from qcompile.quant.integer_weights import weight_codes_grid

if TYPE_CHECKING:
    from qcompile.onnx.builder import Builder

def is_gemmlowp(node: Node) -> bool:
    """A module of the integer stage, or its gemmlowp kernel (the same arguments and tensors)."""
    return node.target.startswith((KERNELS, REFERENCE))


def _clamp(b: Builder, node: Node, value: str) -> str:
    """The module's clamp on its output codes, on float values (see the module docstring)."""
    lo, hi = node.attrs.get("clamp_min", 0), node.attrs.get("clamp_max", 255)
    q = node.quant.qparams
    scale, zero = float(q.scale), int(q.zero_point)
    if lo <= 0 and hi >= 255:
        return value
    if lo == zero and hi >= 255:
        return b.emit("Relu", [value])
    low = b.const("clamp_min", np.array(scale * (lo - zero), np.float32)) if lo > 0 else ""
    high = b.const("clamp_max", np.array(scale * (hi - zero), np.float32)) if hi < 255 else ""
    return b.emit("Clip", [value, low, high] if high else [value, low])


def _weighted(b: Builder, node: Node, transposed: bool) -> tuple[str, str | None]:
    codes = b.graph.param(node, "weight")
    scales, zero_points = weight_codes_grid(node.quant, codes.shape[0])
    input_scale = float(b.graph.inputs(node)[0].quant.qparams.scale)
    return b.integer_weight(node, codes, scales, zero_points, 0, b.graph.param(node, "bias"), input_scale,
                            transposed)


def _lookup(b: Builder, node: Node, x: str) -> str:
    """A table on the codes, as the input's codes (from its QuantizeLinear), a Gather and the output grid."""
    source = b.graph.inputs(node)[0]
    codes = b.codes.get(source.name) or b.emit("QuantizeLinear", [x, *b.grid(source)])
    index = b.emit("Cast", [codes], to=TensorProto.INT64)
    table = b.const(f"{node.name}_table", b.graph.param(node, "table"))
    return b.dequantize(b.emit("Gather", [table, index]), node)


def pads_codes(b: Builder, node: Node) -> bool:
    """Whether ``node`` is a pad the gemmlowp lowering wrote on the codes (``F.pad`` with the zero point)."""
    return (b.graph.attrs.get("backend") in ON_INTEGER_STAGE and node.target == "torch.nn.functional.pad"
            and node.quant.mode == "static")


def code_pad(b: Builder, node: Node, x: str) -> str:
    """A pad of the codes with the zero point, as a pad of the values they stand for with 0."""
    return pad(b, node, x, node.args[1], "constant", 0.0)


def gemmlowp_module(b: Builder, node: Node, x: str) -> str:
    """The ONNX value (a float value on the node's grid before its QDQ) of one gemmlowp module."""
    kind, a = node.target.rsplit(".", 1)[1], node.attrs
    if kind in ("Quantize", "Dequantize"):
        return b.emit("Identity", [x])
    if kind == "QConv2d":
        w, bias = _weighted(b, node, transposed=False)
        out = b.emit("Conv", [x, w] + ([bias] if bias else []), kernel_shape=list(a["kernel_size"]),
                     strides=list(a["stride"]), pads=list(a["padding"]) * 2, dilations=list(a["dilation"]),
                     group=a.get("groups", 1))
        return _clamp(b, node, out)
    if kind == "QLinear":
        w_t, bias = _weighted(b, node, transposed=True)
        out = b.emit("MatMul", [x, w_t])
        return _clamp(b, node, b.emit("Add", [out, bias]) if bias else out)
    if kind == "QAdd":
        other = b.value(b.graph.inputs(node)[1])
        return _clamp(b, node, b.emit("Add", [x, other]))
    if kind == "QMul":
        return _clamp(b, node, b.emit("Mul", [x, b.value(b.graph.inputs(node)[1])]))
    if kind == "QLookup":
        return _lookup(b, node, x)
    if kind == "QClamp":
        return _clamp(b, node, x)
    if kind == "QGlobalAvgPool":
        return b.emit("GlobalAveragePool", [x])
    if kind == "QMean":
        return b.emit("ReduceMean", [x, b.const("axes", np.array([2, 3], np.int64))], keepdims=int(a["keepdim"]))
    if kind == "QCat":
        return b.emit("Concat", [b.value(i) for i in b.graph.inputs(node)], axis=a["dim"])
    if kind == "QMaxPool2d":
        return _pool(b, "max_pool2d", x, dict(a))
    if kind == "QAvgPool2d":
        return _pool(b, "avg_pool2d", x, {k: v for k, v in a.items() if k != "zero_point"})
    raise QCompileError(f"%{node.name}: the gemmlowp module {kind} is not exported to ONNX yet",
                        hint="export from convert{backend=native}")
