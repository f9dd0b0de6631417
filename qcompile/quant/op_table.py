"""How each op takes part in static quantization.

Every tensor-producing op falls in one category:

* ``weighted``: conv / linear modules; int8 weights, own output scale; also
  transposed convolutions (``TRANSPOSED``), whose int8 weights torch takes
  per tensor only.
* ``own``: computes new values and needs its own output scale (add, mul,
  cat, hardswish, leaky ReLU, an unfused batch norm).
* ``shared``: moves or selects values without creating new ones (pooling,
  flatten, reshape, relu after a quantized op, stochastic depth in eval
  mode...); its output reuses its input's scale and zero point, so it needs
  no observer.
* ``fixed``: a bounded output range known in advance (sigmoid: [0, 1]).
* anything else stays float, with dequantize / quantize around it.

Ops that produce no tensor (``size``, shape arithmetic) are neutral: they
read quantized or float tensors alike.
"""

from __future__ import annotations

from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind, Ref
from qcompile.ir.padding import module_padding
from qcompile.ir.types import TensorType

WEIGHTED = {"conv1d", "conv2d", "conv3d", "linear"}
TRANSPOSED = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
OWN = {"add", "mul", "cat", "hardswish", "leaky_relu", "batch_norm2d", "batch_norm3d"}
SHARED = {
    "relu", "relu6", "hardtanh", "max_pool1d", "max_pool2d", "max_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "flatten", "view", "reshape", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
    "dropout", "identity", "mean", "chunk", "split", "split_with_sizes", "getitem", "interpolate", "upsample",
}
# shared ops that give several tensors (read through getitem), each on the input's grid
SPLITS = {"chunk", "split", "split_with_sizes"}
FIXED = {"sigmoid": (1.0 / 256, 0), "hardsigmoid": (1.0 / 256, 0), "tanh": (2.0 / 256, 128)}

# Functions that codegen and the interpreter call for converted binary ops.
QUANTIZED_BINARY = {
    ("add", None): "torch.ops.quantized.add",
    ("add", "relu"): "torch.ops.quantized.add_relu",
    ("mul", None): "torch.ops.quantized.mul",
    ("mul", "relu"): "torch.ops.quantized.mul_relu",
}


def holds_tensor(value_type) -> bool:
    """Whether a value of this type is or contains a tensor."""
    if isinstance(value_type, TensorType):
        return True
    return any(holds_tensor(t) for t in getattr(value_type, "elements", ()))


def is_float_tensor(node: Node) -> bool:
    return isinstance(node.type, TensorType) and node.type.dtype in ("f32",)


def _broadcasts(a: TensorType, b: TensorType, out: TensorType) -> bool:
    """One of a, b is the output's shape and the other the same rank with some dimensions 1."""
    if len(a.shape) != len(b.shape):
        return False
    big, small = (a, b) if a.shape == out.shape else (b, a)
    return big.shape == out.shape and all(s in (1, o) for s, o in zip(small.shape, out.shape, strict=True))


def category(graph: Graph, node: Node) -> str | None:
    """The node's category, or ``None`` if it stays float (or produces no tensor)."""
    if node.kind in (NodeKind.INPUT, NodeKind.OUTPUT, NodeKind.PARAM):
        return None
    if node.op in WEIGHTED:
        return "weighted" if node.kind == NodeKind.MODULE and is_float_tensor(node) else None
    if node.op in TRANSPOSED:  # torch's int8 kernels: one group, no dilation, zero padding
        a = node.attrs
        dilation = a.get("dilation", 1)
        plain = (a.get("groups", 1) == 1 and a.get("padding_mode", "zeros") == "zeros"
                 and all(d == 1 for d in (dilation if isinstance(dilation, (tuple, list)) else (dilation,))))
        return "weighted" if node.kind == NodeKind.MODULE and is_float_tensor(node) and plain else None
    if node.op in ("add", "mul"):
        # only tensor-tensor forms, as positional (a, b); mul also broadcasting one of them (a squeeze-and-
        # excitation block's x * scale[N, C, 1, 1])
        inputs = graph.inputs(node)
        ok = (len(inputs) == 2 and node.args[:2] == (Ref(0), Ref(1)) and not node.kwargs
              and all(is_float_tensor(i) for i in inputs) and is_float_tensor(node)
              and (all(i.type == node.type for i in inputs)
                   or (node.op == "mul" and _broadcasts(inputs[0].type, inputs[1].type, node.type))))
        return "own" if ok else None
    if node.op == "stochastic_depth":  # torchvision's; the identity in eval mode
        training = node.args[3] if len(node.args) > 3 else node.kwargs.get("training", True)
        return "shared" if is_float_tensor(node) and training is False else None
    if node.op == "cat":
        return "own" if is_float_tensor(node) and all(is_float_tensor(i) for i in graph.inputs(node)) else None
    if node.op in OWN:
        return "own" if is_float_tensor(node) and node.op != "batch_norm3d" else None
    if node.op in FIXED:
        return "fixed" if is_float_tensor(node) else None
    if node.op in SHARED:
        if node.op == "getitem" or is_float_tensor(node) or node.op in SPLITS:
            return "shared"
    if zero_pad_widths(node) is not None and is_float_tensor(node):
        return "shared"  # padding with 0.0 is padding with the zero point: the grid does not change
    return None


def zero_pad_widths(node: Node) -> tuple[int, ...] | None:
    """The widths of a pad with zeros (``F.pad(x, widths)``, ``nn.ZeroPad2d``, ``nn.ConstantPad2d(w, 0)``), torch's
    order (last axis first); None for any other node, or widths computed in forward."""
    if node.op == "pad" and node.kind == NodeKind.FUNCTION:
        args, kw = node.args, node.kwargs
        widths = args[1] if len(args) > 1 else kw.get("pad")
        mode = args[2] if len(args) > 2 else kw.get("mode", "constant")
        value = args[3] if len(args) > 3 else kw.get("value")
        ok = mode == "constant" and not value and isinstance(widths, (tuple, list))
        return tuple(widths) if ok and all(isinstance(w, int) for w in widths) else None
    padding = module_padding(node)
    if padding is None or padding[1] != "constant" or padding[2] != 0.0:
        return None
    return padding[0]
