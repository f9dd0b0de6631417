"""torch.nn modules (and the pooling / activation calls they share with functions) as ONNX ops.

A module node of the float graph, or a float op inside an int8 one, becomes
the ONNX op that computes it: ``Conv`` for ``nn.Conv1d`` / ``2d`` / ``3d``,
``MatMul`` + ``Add`` for ``nn.Linear``, ``BatchNormalization``, ``PRelu``,
pooling, activations, and (through their own modules) LSTM / GRU, dynamic
linears, resizes and embedding bags. :func:`_module` is the entry point; the
QDQ and QOperator exporters call it for every module they do not write as
integer ops themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from qcompile.errors import QCompileError
from qcompile.ir.activations import SETTINGS, node_settings
from qcompile.ir.node import Node
from qcompile.ir.padding import module_padding
from qcompile.onnx import sequence_ops, tensor_ops, torch_written
from qcompile.onnx.dynamic import dynamic_linear
from qcompile.onnx.embedding_bag import embedding_bag
from qcompile.onnx.normalization import OPS as NORMALIZATIONS
from qcompile.onnx.normalization import normalization
from qcompile.onnx.recurrent import recurrent
from qcompile.onnx.resize import resize
from qcompile.onnx.tensor_ops import pixel_unshuffle

if TYPE_CHECKING:
    from qcompile.onnx.builder import Builder


def _pair(value, n=2):
    return list(value) if isinstance(value, (tuple, list)) else [value] * n


CONVS = ("conv1d", "conv2d", "conv3d")


def functional_layer(b: Builder, node: Node, x: str, args: list, kw: dict) -> str:
    """``F.conv1d`` / ``2d`` / ``3d`` (as ``Conv``) or ``F.linear`` (``MatMul``, ``Add``), weights as inputs."""
    names = ("weight", "bias") if node.op == "linear" else ("weight", "bias", "stride", "padding", "dilation", "groups")
    call = dict(zip(names, args[1:], strict=False)) | kw
    weight, bias = b.value(call["weight"]), call.get("bias")
    if node.op == "linear":
        out = b.emit("MatMul", [x, b.emit("Transpose", [weight])])
        return b.emit("Add", [out, b.value(bias)]) if bias is not None else out
    return b.emit("Conv", [x, weight] + ([b.value(bias)] if bias is not None else []),
                  **conv_attrs(node, call, kernel_shape=list(call["weight"].type.shape[2:])))


def conv_attrs(node: Node, settings: dict | None = None, kernel_shape: list | None = None) -> dict:
    """ONNX Conv / QLinearConv / ConvTranspose attributes from torch's settings: an nn.Conv*d /
    ConvTranspose*d node's own (default) or a functional call's, whose kernel is its weight's shape."""
    a = node.attrs if settings is None else settings
    if isinstance(a.get("padding"), str):
        raise QCompileError(f"%{node.name}: padding={a['padding']!r} is not exported yet")
    n = int(node.op[-2])  # conv2d, conv_transpose2d: 2 spatial axes
    pads = _pair(a.get("padding", 0), n)
    return dict(kernel_shape=kernel_shape or _pair(a["kernel_size"], n), strides=_pair(a.get("stride", 1), n),
                pads=pads + pads, dilations=_pair(a.get("dilation", 1), n), group=a.get("groups", 1))


def _activation(b: Builder, value: str, act: str | None) -> str:
    if act == "relu":
        return b.emit("Relu", [value])
    if act == "relu6":
        return b.emit("Clip", [value, b.const("zero", np.array(0, np.float32)), b.const("six", np.array(6, np.float32))])
    return value


ACTIVATIONS = ("relu", "relu6", "hardswish", "hardsigmoid", "sigmoid", "tanh", "silu", "selu", "softsign", "mish",
               *SETTINGS)


def _module(b: Builder, node: Node, x: str) -> str:
    a = node.attrs
    if node.op in CONVS:
        w, bias = b.weight(node)
        out = b.emit("Conv", [x, w] + ([bias] if bias else []), **conv_attrs(node))
        return b.emit("Relu", [out]) if "ConvReLU" in node.target else out
    if node.op in ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):  # float (no int8 kernel)
        if a.get("padding_mode", "zeros") != "zeros":
            raise QCompileError(f"%{node.name}: padding_mode={a['padding_mode']!r} is not exported yet")
        w, bias = b.weight(node)
        return b.emit("ConvTranspose", [x, w] + ([bias] if bias else []), **conv_attrs(node),
                      output_padding=_pair(a.get("output_padding", 0), int(node.op[-2])))
    if node.quant.mode == "dynamic" and node.op == "linear":  # LSTM / GRU: recurrent; int8 tables, bags: below
        return dynamic_linear(b, node, x)
    if node.op == "linear":  # nn.Linear, QATLinear, quantized Linear(ReLU)
        w_t, bias = b.weight(node, transposed=True)
        out = b.emit("MatMul", [x, w_t])
        if bias:
            out = b.emit("Add", [out, bias])
        return b.emit("Relu", [out]) if "LinearReLU" in node.target else out
    if node.op in NORMALIZATIONS:
        return normalization(b, node, x)
    if node.op == "pixel_shuffle":
        return b.emit("DepthToSpace", [x], blocksize=a["upscale_factor"], mode="CRD")
    if node.op == "pixel_unshuffle":
        return pixel_unshuffle(b, node, x, a["downscale_factor"])
    if node.op in ACTIVATIONS:
        return _activation_op(b, node.op, x, node_settings(node))
    if node.op == "prelu":  # one slope, or one per channel (axis 1)
        slope = b.graph.param(node, "weight").float()
        rank = len(b.graph.inputs(node)[0].type.shape)
        shape = [slope.numel()] + [1] * (rank - 2) if slope.numel() > 1 else [1]
        return b.emit("PRelu", [x, b.const(f"{node.name}_slope", slope.reshape(shape))])
    if node.op in ("lstm", "gru"):
        return recurrent(b, node, x)
    if node.op in sequence_ops.MODULE_OPS:
        return sequence_ops.module_op(b, node, x)
    if node.op in _POOL_ARGS:
        return _pool(b, node.op, x, a)
    if node.op == "upsample":
        return resize(b, node, x, a)
    if node.op == "embedding_bag":
        return embedding_bag(b, node)
    if node.op in ADAPTIVE_POOLS:
        return adaptive_pool(b, node, x, a["output_size"], a.get("return_indices", False))
    if node.op in ("dropout", "identity", "quantize", "dequantize"):
        return b.emit("Identity", [x])
    if node.op == "fake_quantize":
        return _fake_quantize(b, node, x)
    if module_padding(node) is not None:
        return tensor_ops.pad_module(b, node, x)
    if node.op == "flatten":
        rank = len(b.graph.inputs(node)[0].type.shape)
        return tensor_ops.flatten(b, x, rank, a.get("start_dim", 1), a.get("end_dim", -1))
    if torch_written.writes(node):  # any other float module: as torch's own exporter writes it
        return torch_written.torch_written(b, node)
    raise QCompileError(f"%{node.name}: module op {node.op!r} ({node.target}) is not exported to ONNX yet",
                        hint="keep that op out of the export, or extend qcompile.onnx.modules")


# Pooling settings by position in F.max_pool2d / F.avg_pool2d (and their aten ops) after the input.
_POOL_ARGS = {f"{kind}_pool{n}d": settings for n in (1, 2, 3) for kind, settings in (
    ("max", ("kernel_size", "stride", "padding", "dilation", "ceil_mode")),
    ("avg", ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")))}


def _pool(b: Builder, op: str, x: str, a: dict) -> str:
    """MaxPool / AveragePool from the settings of an nn module or a functional call (``a``)."""
    if a.get("return_indices") or a.get("divisor_override"):
        raise QCompileError(f"{op} with return_indices or divisor_override is not exported to ONNX yet")
    n = int(op[-2])  # max_pool1d: 1 spatial axis
    pads = _pair(a.get("padding", 0), n)
    common = dict(kernel_shape=_pair(a["kernel_size"], n), strides=_pair(a.get("stride") or a["kernel_size"], n),
                  pads=pads + pads, ceil_mode=int(a.get("ceil_mode", False)))
    if op.startswith("max"):
        return b.emit("MaxPool", [x], dilations=_pair(a.get("dilation", 1), n), **common)
    # torch never counts a ceil-mode window's overhang past the input; without padding that is ONNX's
    # count_include_pad=0 (with it, ONNX counts the overhang too)
    include = a.get("count_include_pad", True) and not (a.get("ceil_mode") and not any(pads))
    return b.emit("AveragePool", [x], count_include_pad=int(include), **common)


ADAPTIVE_POOLS = {f"adaptive_{kind}_pool{n}d" for kind in ("avg", "max") for n in (1, 2, 3)}


def adaptive_pool(b: Builder, node: Node, x: str, output_size, return_indices: bool = False) -> str:
    """An adaptive pool: global, or a fixed pool where each input size is a multiple of its output size
    (torch's windows are then ``input / output`` wide, side by side), or the input itself."""
    kind = "Max" if "max" in node.op else "Average"
    n = int(node.op[-2])
    if return_indices:
        raise QCompileError(f"%{node.name}: {node.op} with return_indices is not exported to ONNX yet")
    sizes = list(b.graph.inputs(node)[0].type.shape[-n:])
    wanted = [s if o is None else o for o, s in zip(_pair(output_size, n), sizes, strict=True)]
    if set(wanted) == {1}:
        return b.emit(f"Global{kind}Pool", [x])
    spatial = [axis for axes in b.graph.attrs.get("dynamic_axes", {}).values() for axis in axes if axis >= 2]
    if spatial or any(not isinstance(s, int) or s % o for s, o in zip(sizes, wanted, strict=True)):
        raise QCompileError(
            f"%{node.name}: {node.op} from {sizes} to {wanted} is exported only where each input size is a fixed "
            "multiple of the output size", hint="give the model an input shape where it is (--input-shape; AlexNet and "
            "VGG at 224 x 224 pool 6 x 6 and 7 x 7 maps as they are), or pool to 1 (global pooling)")
    if sizes == wanted:
        return b.emit("Identity", [x])
    kernel = [s // o for s, o in zip(sizes, wanted, strict=True)]
    return b.emit(f"{kind}Pool", [x], kernel_shape=kernel, strides=kernel)


def _fake_quantize(b: Builder, node: Node, x: str) -> str:
    """A QAT fake-quant node as the Quantize/DequantizeLinear pair it simulates."""
    from qcompile.nn.qat import _affine_qparams

    lo, hi = b.graph.param(node, "min_val"), b.graph.param(node, "max_val")
    if not torch.isfinite(lo):
        return b.emit("Identity", [x])  # no range learned yet: the module passes values through
    a = node.attrs
    scale, zero_point = _affine_qparams(lo, hi, a["quant_min"], a["quant_max"], a["symmetric"])
    # the module saturates at its dtype's limits (qcompile.nn.qat.FakeQuantize), as QuantizeLinear does
    dtype = np.uint8 if a["quant_min"] >= 0 else np.int8
    s = b.const(f"{node.name}_scale", np.array(float(scale), np.float32))
    zp = b.const(f"{node.name}_zp", np.array(int(zero_point), dtype))
    return b.emit("DequantizeLinear", [b.emit("QuantizeLinear", [x, s, zp]), s, zp])


def _softplus(b: Builder, x: str, beta: float, threshold: float) -> str:
    """torch's softplus: log(1 + exp(beta x)) / beta, and x itself where beta x is above the threshold.

    ONNX's Softplus has no beta and no threshold. From a threshold of 20 up,
    the logarithm is within float rounding of x where torch switches, so the
    switch is written only for a lower threshold.
    """
    beta_value = b.const("beta", np.array(beta, np.float32))
    scaled = x if beta == 1.0 else b.emit("Mul", [x, beta_value])
    soft = b.emit("Softplus", [scaled])
    if beta != 1.0:
        soft = b.emit("Div", [soft, beta_value])
    if threshold >= 20.0:
        return soft
    above = b.emit("Greater", [scaled, b.const("threshold", np.array(threshold, np.float32))])
    return b.emit("Where", [above, x, soft])


def _activation_op(b: Builder, op: str, x: str, settings: dict | None = None) -> str:
    settings = settings or {}
    if op == "relu6":
        return _activation(b, x, "relu6")
    if op == "silu":  # x * sigmoid(x); ONNX has no SiLU op at opset 21
        return b.emit("Mul", [x, b.emit("Sigmoid", [x])])
    if op == "mish":  # x * tanh(softplus(x))
        return b.emit("Mul", [x, b.emit("Tanh", [b.emit("Softplus", [x])])])
    if op == "leaky_relu":
        return b.emit("LeakyRelu", [x], alpha=float(settings["negative_slope"]))
    if op in ("elu", "celu"):
        return b.emit(op.capitalize(), [x], alpha=float(settings["alpha"]))
    if op == "hardtanh":
        low, high = (b.const(k, np.array(settings[k], np.float32)) for k in ("min_val", "max_val"))
        return b.emit("Clip", [x, low, high])
    if op == "softplus":
        return _softplus(b, x, float(settings["beta"]), float(settings["threshold"]))
    return b.emit({"relu": "Relu", "hardswish": "HardSwish", "hardsigmoid": "HardSigmoid", "sigmoid": "Sigmoid",
                   "tanh": "Tanh", "selu": "Selu", "softsign": "Softsign"}[op], [x],
                  **({"alpha": 1 / 6} if op == "hardsigmoid" else {}))
