"""Emitters of the function and method calls that move, view, index and combine tensors.

One function per op (or per family of ops sharing their arguments),
registered by op name (:mod:`.registry`); each gets the builder, the node,
its arguments (graph values as nodes) and keyword arguments, and returns
the ONNX value(s), or ``None`` for a form it does not write. Shape
arithmetic (``x.size(0)``, ``view(n, -1)``) becomes Shape / Gather /
Concat, so exported models keep a dynamic batch dimension.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from onnx import TensorProto

from qcompile.ir.activations import activation_settings
from qcompile.ir.node import Node, NodeKind
from qcompile.ir.types import ScalarType, TensorType, TupleType
from qcompile.onnx import sequence_ops, tensor_ops
from qcompile.onnx.modules import (
    _POOL_ARGS,
    ACTIVATIONS,
    ADAPTIVE_POOLS,
    CONVS,
    _activation,
    _activation_op,
    _pool,
    adaptive_pool,
    functional_layer,
)
from qcompile.onnx.registry import emits
from qcompile.onnx.resize import resize

if TYPE_CHECKING:
    from qcompile.onnx.builder import Builder

COMPARISONS = {"eq": "Equal", "ne": "Equal", "lt": "Less", "gt": "Greater", "le": "LessOrEqual",
               "ge": "GreaterOrEqual"}  # ne: Not(Equal)
BINARY = {"add": "Add", "mul": "Mul", "sub": "Sub", "div": "Div", "floor_divide": "Div", "pow": "Pow"} | COMPARISONS


def first(b: Builder, args: list) -> str | None:
    """The ONNX value of the first argument, when it is one tensor (not a list from ``chunk`` / ``split``)."""
    if not args or not isinstance(args[0], Node) or isinstance(b.names.get(args[0].name), list):
        return None
    return b.value(args[0])


def _dims(args: list) -> list:
    """``view(n, -1)`` and ``view((n, -1))`` alike: the sizes after the tensor."""
    return list(args[1:]) if len(args) > 2 or not isinstance(args[1], (list, tuple)) else list(args[1])


def _integer(value: Any) -> bool:
    """An int constant, an int scalar of the graph, or an int64 tensor."""
    if isinstance(value, Node):
        if isinstance(value.type, TensorType):
            return value.type.dtype == "i64"
        return getattr(value.type, "name", "") == "int"
    return isinstance(value, int) and not isinstance(value, bool)


@emits(*BINARY)
def binary(b: Builder, node: Node, args: list, kw: dict) -> str | None:
    """A binary op on tensors or on scalars (shape arithmetic such as ``x.size(1) // 2`` or ``c ** -0.5``).

    Scalars computed in the graph are int64 or float32 ONNX scalars. The op
    works in int64 where every operand is an integer (int constants, int
    scalars, int64 tensors; not a true division), otherwise in float32. A
    fused activation follows.
    """
    if len(args) != 2:
        return None
    tensor = any(isinstance(v, Node) and isinstance(v.type, TensorType) for v in args)
    result_int = isinstance(node.type, ScalarType) and node.type.name == "int"
    # integers in, integers out (ids == 0, x.size(2) == 224, n // 2); a true division gives floats
    as_int = (all(_integer(v) for v in args) and node.op != "div"
              and (tensor or result_int or node.op in COMPARISONS))
    dtype = np.int64 if as_int else np.float32
    values = []
    for v in args:
        if not isinstance(v, Node):
            values.append(b.const("scalar", np.array(v, dtype)))
        elif not isinstance(v.type, TensorType) and getattr(v.type, "name", "") in ("int", "bool") and not as_int:
            values.append(b.emit("Cast", [b.value(v)], to=TensorProto.FLOAT))
        else:
            values.append(b.value(v))
    out = b.emit(BINARY[node.op], values)
    return _activation(b, b.emit("Not", [out]) if node.op == "ne" else out, node.act)


@emits(*ACTIVATIONS)
def activation(b: Builder, node: Node, args: list, kw: dict) -> str:
    return _activation_op(b, node.op, first(b, args), activation_settings(node.op, args[1:], kw))


@emits(*CONVS, "linear")
def functional(b: Builder, node: Node, args: list, kw: dict) -> str | None:
    """``F.conv2d`` / ``F.linear`` with their weights as graph values (modules are written by :mod:`.modules`)."""
    return functional_layer(b, node, first(b, args), args, kw) if node.kind == NodeKind.FUNCTION else None


@emits("interpolate")
def interpolate(b: Builder, node: Node, args: list, kw: dict) -> str:
    given = dict(zip(("size", "scale_factor", "mode", "align_corners"), args[1:], strict=False))
    return resize(b, node, first(b, args), given | b.kwargs(node))


@emits("flatten")
def flatten(b: Builder, node: Node, args: list, kw: dict) -> str:
    start = args[1] if len(args) > 1 else kw.get("start_dim", 0)
    end = args[2] if len(args) > 2 else kw.get("end_dim", -1)
    return tensor_ops.flatten(b, first(b, args), len(args[0].type.shape), start, end)


@emits("cat")
def cat(b: Builder, node: Node, args: list, kw: dict) -> str:
    dim = args[1] if len(args) > 1 else kw.get("dim", 0)
    return b.emit("Concat", [b.value(t) for t in args[0]], axis=dim)


@emits("view", "reshape", "_unsafe_view")
def reshape(b: Builder, node: Node, args: list, kw: dict) -> str:
    shape = b.emit("Concat", [b.int_value(d) for d in _dims(args)], axis=0)
    return b.emit("Reshape", [first(b, args), shape])


@emits("expand_as")
def expand_as(b: Builder, node: Node, args: list, kw: dict) -> str:
    return b.emit("Expand", [first(b, args), b.emit("Shape", [b.value(args[1])])])


@emits("expand")
def expand(b: Builder, node: Node, args: list, kw: dict) -> str:
    """torch's -1 keeps a size; ONNX's Expand broadcasts a 1 to the input's size."""
    shape = b.emit("Concat", [b.int_value(1 if d == -1 else d) for d in _dims(args)], axis=0)
    return b.emit("Expand", [first(b, args), shape])


@emits("dim")
def rank(b: Builder, node: Node, args: list, kw: dict) -> str:
    return b.const("rank", np.array(len(args[0].type.shape), np.int64))  # fixed in the file


@emits("size", "sym_size")
def size(b: Builder, node: Node, args: list, kw: dict) -> str:
    """``x.size()``, ``x.size(d)``; ``sym_size`` is torch.export's symbolic dimension."""
    shape = b.emit("Shape", [first(b, args)])
    if len(args) > 1:
        return b.emit("Gather", [shape, b.const("index", np.array(args[1], np.int64))], axis=0)
    return shape


@emits("getattr")
def attribute(b: Builder, node: Node, args: list, kw: dict) -> str | None:
    """``x.max(1).values`` / ``.indices`` and ``x.shape``."""
    pair = b.names.get(args[0].name)
    if args[1] in ("values", "indices") and isinstance(pair, list):
        return b.emit("Identity", [pair[("values", "indices").index(args[1])]])
    if args[1] == "shape":
        return b.emit("Shape", [first(b, args)])
    return None


@emits("index")
def index(b: Builder, node: Node, args: list, kw: dict) -> str | None:
    """``x[idx]`` under torch.export."""
    if not node.target.startswith("torch.ops.aten.index."):
        return None
    return sequence_ops.tensor_index(b, node, first(b, args), tuple(slice(None) if i is None else i for i in args[1]))


@emits("getitem")
def getitem(b: Builder, node: Node, args: list, kw: dict) -> str | list | None:
    """An element of a list of values (``chunk``, an LSTM's ``(h, c)``), of a shape, or a tensor index."""
    source, key = args[0], args[1]
    if isinstance(b.names.get(source.name), list):
        element = b.names[source.name][key]
        return element if isinstance(element, list) else b.emit("Identity", [element])  # (h, c) stays a pair
    if not isinstance(source.type, TensorType) and isinstance(key, int):
        return b.emit("Gather", [b.value(source), b.const("index", np.array(key, np.int64))], axis=0)
    if not isinstance(source.type, TensorType) and isinstance(key, slice):  # x.shape[-2:]
        bounds = [0 if key.start is None else key.start, np.iinfo(np.int64).max if key.stop is None else key.stop,
                  0, 1 if key.step is None else key.step]
        return b.emit("Slice", [b.value(source), *(b.const("bound", np.array([v], np.int64)) for v in bounds)])
    if isinstance(source.type, TensorType):
        return sequence_ops.tensor_index(b, node, first(b, args), key)
    return None


@emits("transpose", "swapaxes", "swapdims", "permute")
def transpose(b: Builder, node: Node, args: list, kw: dict) -> str:
    count = len(args[0].type.shape)
    if node.op == "permute":
        perm = list(args[1]) if isinstance(args[1], (list, tuple)) else list(args[1:])
    else:
        perm = list(range(count))
        d0, d1 = (d % count for d in args[1:3])
        perm[d0], perm[d1] = perm[d1], perm[d0]
    return b.emit("Transpose", [first(b, args)], perm=perm)


@emits("contiguous", "clone")
def identity(b: Builder, node: Node, args: list, kw: dict) -> str:
    return b.emit("Identity", [first(b, args)])


@emits("dropout", "feature_dropout", "alpha_dropout")
def dropout(b: Builder, node: Node, args: list, kw: dict) -> str | None:
    """Dropout in eval mode: the identity (an ATen call says ``train=True`` in its third argument)."""
    training = node.target.startswith("torch.ops.aten.") and len(args) > 2 and args[2] is True
    return None if training else b.emit("Identity", [first(b, args)])


@emits("stochastic_depth")
def stochastic_depth(b: Builder, node: Node, args: list, kw: dict) -> str | None:
    """torchvision's, in eval mode: the input as it is."""
    training = args[3] if len(args) > 3 else kw.get("training", True)
    return None if training else b.emit("Identity", [first(b, args)])


@emits("masked_fill")
def masked_fill(b: Builder, node: Node, args: list, kw: dict) -> str:
    """``(x, mask, value)`` as ``Where(mask, value, x)``."""
    value = b.const("fill", np.array(args[2], np.float32)) if not isinstance(args[2], Node) else b.value(args[2])
    return b.emit("Where", [b.value(args[1]), value, first(b, args)])


@emits("chunk")
def chunk(b: Builder, node: Node, args: list, kw: dict) -> list[str]:
    chunks, dim = args[1], kw.get("dim", args[2] if len(args) > 2 else 0)
    outs = [b.fresh(f"{node.name}_{i}") for i in range(chunks)]
    b.emit("Split", [first(b, args)], outs, axis=dim, num_outputs=chunks)
    return outs


@emits("split", "split_with_sizes")
def split(b: Builder, node: Node, args: list, kw: dict) -> list[str] | None:
    """Split by the sizes of the traced pieces."""
    if not isinstance(node.type, TupleType):
        return None
    dim = kw.get("dim", args[2] if len(args) > 2 else 0)
    sizes = [t.shape[dim] for t in node.type.elements]
    outs = [b.fresh(f"{node.name}_{i}") for i in range(len(sizes))]
    b.emit("Split", [first(b, args), b.const(f"{node.name}_sizes", np.array(sizes, np.int64))], outs, axis=dim)
    return outs


@emits(*ADAPTIVE_POOLS)
def adaptive(b: Builder, node: Node, args: list, kw: dict) -> str:
    return adaptive_pool(b, node, first(b, args), args[1] if len(args) > 1 else kw["output_size"],
                         bool(args[2] if len(args) > 2 else kw.get("return_indices", False)))


@emits(*_POOL_ARGS)
def pool(b: Builder, node: Node, args: list, kw: dict) -> str:
    return _pool(b, node.op, first(b, args), dict(zip(_POOL_ARGS[node.op], args[1:], strict=False)) | kw)


emits(*sequence_ops.FUNCTION_OPS)(sequence_ops.function_op)
emits(*tensor_ops.FUNCTION_OPS)(tensor_ops.function_op)
