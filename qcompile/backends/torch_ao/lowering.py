"""The ``native`` backend: lowering quantized-region nodes onto torch's quantized modules and ops.

torch's quantized tensors (``quint8``, ``qint8``, ``quantize_per_tensor``)
were deprecated in May 2026 (pytorch issue 184982); this module and the
dynamic-quantization path are where qcompile still creates them. Weights
arrive as codes (:mod:`qcompile.quant.integer_weights`) and are wrapped as
torch quantized tensors here (:func:`as_torch_weight`).

Each rule turns one float node, whose qparams ``convert`` has chosen, into
the node torch's x86 / fbgemm / qnnpack kernels run: ``conv2d`` becomes a
``torch.ao.nn.quantized.Conv2d`` holding an int8 weight, ``add`` becomes
``torch.ops.quantized.add(a, b, scale, zero_point)``, and so on. This is
what torch.ao users do by hand with QuantStub, FloatFunctional and friends.
Before and after (``convert``, ResNet-18)::

    %conv1 = conv2d(%quantize_x, $conv1.{weight,bias}) : f32[1,64,112,112] {act='relu', ...}
    %add   = add(%layer1_0_conv2, %maxpool) : f32[1,64,56,56] {act='relu'}

    %conv1 = conv2d(%quantize_x, $conv1.{weight,bias,scale,zero_point}) : qu8[1,64,112,112] {target='torch.ao.nn.intrinsic.quantized.ConvReLU2d', ...}
    %add   = add(%layer1_0_conv2, %maxpool, 0.0412, 0) : qu8[1,64,56,56] {target='torch.ops.quantized.add_relu'}
"""

from __future__ import annotations

import torch

from qcompile.backends.channels_last import view_as_reshape
from qcompile.backends.torch_ao.tensors import TORCH_DTYPES
from qcompile.ir.activations import node_settings
from qcompile.ir.graph import Graph
from qcompile.ir.modules import ctor_defaults
from qcompile.ir.node import Node, NodeKind, Ref
from qcompile.ir.targets import resolve_target
from qcompile.quant.clamps import split_relu6
from qcompile.quant.integer_weights import IntegerWeight, integer_weight
from qcompile.quant.op_table import QUANTIZED_BINARY, SHARED

# the targets of nodes lowered onto torch's quantized modules and ops
NATIVE_TARGETS = ("torch.ao.", "torch.ops.quantized.")

_CONV = {
    ("conv1d", None): "torch.ao.nn.quantized.Conv1d",
    ("conv2d", None): "torch.ao.nn.quantized.Conv2d",
    ("conv3d", None): "torch.ao.nn.quantized.Conv3d",
    ("conv1d", "relu"): "torch.ao.nn.intrinsic.quantized.ConvReLU1d",
    ("conv2d", "relu"): "torch.ao.nn.intrinsic.quantized.ConvReLU2d",
    ("conv3d", "relu"): "torch.ao.nn.intrinsic.quantized.ConvReLU3d",
}


_CONV |= {(f"conv_transpose{n}d", None): f"torch.ao.nn.quantized.ConvTranspose{n}d" for n in (1, 2, 3)}


def _scalar_params(graph: Graph, node: Node) -> dict[str, str]:
    q = node.quant.qparams
    base = node.source.module_path or node.name
    return {
        "scale": graph.add_param(f"{base}.scale", torch.tensor(float(q.scale))),
        "zero_point": graph.add_param(f"{base}.zero_point", torch.tensor(int(q.zero_point))),
    }


def as_torch_weight(weight: IntegerWeight) -> torch.Tensor:
    """The codes and grid as the torch quantized tensor torch's quantized modules hold."""
    if weight.per_channel:
        return torch._make_per_channel_quantized_tensor(weight.codes, weight.scales, weight.zero_points, 0)
    return torch._make_per_tensor_quantized_tensor(weight.codes, float(weight.scales[0]), int(weight.zero_points[0]))


def _quantized_weight_params(graph: Graph, node: Node) -> dict[str, str]:
    """int8 weight, float bias (zeros if the layer had none), output scale and zero point."""
    weight_name = node.params["weight"]
    graph.params[weight_name] = as_torch_weight(integer_weight(graph.params[weight_name], node.quant))
    params = {"weight": weight_name}
    if "bias" in node.params:
        params["bias"] = node.params["bias"]
    else:
        out_channels = graph.params[weight_name].shape[0]
        params["bias"] = graph.add_param(f"{node.source.module_path or node.name}.bias", torch.zeros(out_channels))
    return params | _scalar_params(graph, node)


def _act(node: Node) -> str | None:
    return "relu" if node.act == "relu" else None


def _convert_conv(graph: Graph, node: Node) -> None:
    split_relu6(graph, node)
    node.target = _CONV[(node.op, _act(node))]
    node.params = _quantized_weight_params(graph, node)
    node.attrs, node.act = node.attrs | {"bias": True}, None  # a ReLU is the module's; a ReLU6 the clamp after it


def _convert_linear(graph: Graph, node: Node) -> None:
    split_relu6(graph, node)
    relu = _act(node) == "relu"
    node.target = "torch.ao.nn.intrinsic.quantized.LinearReLU" if relu else "torch.ao.nn.quantized.Linear"
    node.params = _quantized_weight_params(graph, node)
    node.act = None  # a ReLU is the module's; a ReLU6 the clamp after it
    # nnq.Linear spells its bias flag "bias_", LinearReLU "bias"
    bias_flag = "bias_" if "bias_" in ctor_defaults(resolve_target(node.target)) else "bias"
    node.attrs = {"in_features": node.attrs["in_features"], "out_features": node.attrs["out_features"],
                  bias_flag: True}


def _convert_batch_norm(graph: Graph, node: Node) -> None:
    node.target = f"torch.ao.nn.quantized.{'BatchNorm2d' if node.op == 'batch_norm2d' else 'BatchNorm3d'}"
    node.params = dict(node.params) | _scalar_params(graph, node)
    node.attrs = {k: node.attrs[k] for k in ("num_features", "eps", "momentum")}


def _as_function(graph: Graph, node: Node, target: str, inputs: list[Node], args: tuple) -> None:
    node.kind = NodeKind.FUNCTION
    node.target = target
    node.params = {}
    node.attrs = {}
    graph.set_inputs(node, inputs, args=args, kwargs={})


def _convert_binary(graph: Graph, node: Node) -> None:
    q = node.quant.qparams
    target = QUANTIZED_BINARY[(node.op, node.act)]
    node.act = None  # add_relu computes it
    _as_function(graph, node, target, graph.inputs(node), (Ref(0), Ref(1), float(q.scale), int(q.zero_point)))


def _convert_cat(graph: Graph, node: Node) -> None:
    q = node.quant.qparams
    tensors = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    _as_function(graph, node, "torch.ops.quantized.cat", graph.inputs(node),
                 (tensors, dim, float(q.scale), int(q.zero_point)))


def _convert_hardswish(graph: Graph, node: Node) -> None:
    q = node.quant.qparams
    _as_function(graph, node, "torch.ops.quantized.hardswish", graph.inputs(node)[:1],
                 (Ref(0), float(q.scale), int(q.zero_point)))


def _convert_leaky_relu(graph: Graph, node: Node) -> None:
    q = node.quant.qparams
    slope = float(node_settings(node)["negative_slope"])
    _as_function(graph, node, "torch.ops.quantized.leaky_relu", graph.inputs(node)[:1],
                 (Ref(0), slope, False, float(q.scale), int(q.zero_point)))


def _convert_quantize(graph: Graph, node: Node) -> None:
    q = node.quant.qparams
    node.target = "torch.ao.nn.quantized.Quantize"
    node.attrs = {"scale": float(q.scale), "zero_point": int(q.zero_point), "dtype": TORCH_DTYPES[q.dtype]}


def _convert_shared(graph: Graph, node: Node) -> None:
    if view_as_reshape(node):
        return
    if node.op == "mean":
        _mean_over_ones_as_squeeze(graph, node)


def _mean_over_ones_as_squeeze(graph: Graph, node: Node) -> None:
    """A mean over axes of size 1 only, dropping them, as the squeeze it is (the same values).

    torch's int8 mean fails on a channels-last tensor whose axes past the
    channels are all 1 (``required rank 5 tensor to use channels_last_3d
    format``): S3D's classifier, a 1x1x1 convolution over a 1x1x1 map, then
    ``mean((2, 3, 4))``.
    """
    args, kwargs = node.args, node.kwargs
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    shape = graph.inputs(node)[0].type.shape
    if dims is None or keepdim or (len(args) > 3 or set(kwargs) - {"dim", "keepdim"}):
        return
    dims = tuple(d % len(shape) for d in (dims if isinstance(dims, (list, tuple)) else (dims,)))
    if all(shape[d] == 1 for d in dims):
        node.kind, node.target, node.op = NodeKind.METHOD, "squeeze", "squeeze"
        graph.set_inputs(node, graph.inputs(node)[:1], args=(Ref(0), dims), kwargs={})


RULES = {
    "conv1d": _convert_conv, "conv2d": _convert_conv, "conv3d": _convert_conv,
    "linear": _convert_linear,
    "conv_transpose1d": _convert_conv, "conv_transpose2d": _convert_conv, "conv_transpose3d": _convert_conv,
    "batch_norm2d": _convert_batch_norm, "batch_norm3d": _convert_batch_norm,
    "add": _convert_binary, "mul": _convert_binary,
    "cat": _convert_cat,
    "hardswish": _convert_hardswish,
    "leaky_relu": _convert_leaky_relu,
    "quantize": _convert_quantize,
} | {op: _convert_shared for op in SHARED}


def convert_dequantize(node: Node) -> None:
    node.target = "torch.ao.nn.quantized.DeQuantize"
    node.attrs = {}
