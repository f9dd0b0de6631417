"""ONNX for the ops of sequence models: attention, layer norm, softmax, GELU.

Transformer graphs (most of them lowered through ``torch.export``) also move
tensors around with ops CNNs never use: ``unflatten``, ``select``,
``squeeze`` / ``unsqueeze`` (the symbolic batch size, ``sym_size``, is
``size``'s Shape / Gather in :mod:`qcompile.onnx.export`). Every
shape is built from the input's ``Shape`` at run time, so the exported model
keeps its dynamic batch.

Attention is written out in opset-21 ops (MatMul, Softmax, MatMul); the scale
``1 / sqrt(head dim)`` is a constant, since the head dimension is static.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from onnx import TensorProto

from qcompile.backends.torch_ao.tensors import integer_codes, is_torch_quantized
from qcompile.errors import QCompileError
from qcompile.ir.node import Node
from qcompile.ir.types import TensorType
from qcompile.quant.embedding import embedding_call, rows_as_read

if TYPE_CHECKING:
    from qcompile.onnx.builder import Builder

# Ops this module exports, as function / method calls and as nn modules.
FUNCTION_OPS = ("unflatten", "unsqueeze", "squeeze", "select", "unbind", "layer_norm", "scaled_dot_product_attention",
                "softmax", "_softmax", "gelu", "matmul", "bmm", "embedding", "arange", "slice")
MODULE_OPS = ("layer_norm", "softmax", "gelu", "embedding")


def _arg(args: list, kw: dict, index: int, name: str, default: Any = None) -> Any:
    return args[index] if len(args) > index else kw.get(name, default)


def int_list(b: Builder, dims: Any) -> str:
    """A 1-D int64 constant of one int or a list of them (axes, sizes)."""
    dims = list(dims) if isinstance(dims, (list, tuple)) else [dims]
    return b.const("axes", np.array(dims, np.int64))


def int_slice(b: Builder, values: str, start: int, end: int) -> str:
    """``values[start:end]`` of a 1-D int64 value (a shape, offsets)."""
    return b.emit("Slice", [values, b.const("start", np.array([start], np.int64)),
                            b.const("end", np.array([end], np.int64))])


def _optional(b: Builder, value: Any) -> str:
    return b.value(value) if isinstance(value, Node) else ""


def function_op(b: Builder, node: Node, args: list, kw: dict) -> str | list[str]:
    """The ONNX value computing ``node``, a call of one of :data:`FUNCTION_OPS` (``unbind``: one per slice)."""
    op = node.op
    if op == "arange":
        return _arange(b, node, args)
    x = b.value(args[0])
    if op == "unflatten":
        rank = len(args[0].type.shape)
        dim = _arg(args, kw, 1, "dim") % rank
        sizes = [b.int_value(s) for s in _arg(args, kw, 2, "sizes")]
        shape = b.emit("Shape", [x])
        parts = ([int_slice(b, shape, 0, dim)] if dim > 0 else []) + sizes
        if dim + 1 < rank:
            parts.append(int_slice(b, shape, dim + 1, rank))
        return b.emit("Reshape", [x, b.emit("Concat", parts, axis=0)])
    if op == "slice":  # torch.export's x[:, start:end:step]
        dim = _arg(args, kw, 1, "dim", 0) % len(args[0].type.shape)
        bounds = slice(_arg(args, kw, 2, "start"), _arg(args, kw, 3, "end"), _arg(args, kw, 4, "step", 1))
        return tensor_index(b, node, x, (*[slice(None)] * dim, bounds))
    if op == "unsqueeze":
        return b.emit("Unsqueeze", [x, int_list(b, _arg(args, kw, 1, "dim"))])
    if op == "squeeze":
        dims = _arg(args, kw, 1, "dim")
        return b.emit("Squeeze", [x] + ([int_list(b, dims)] if dims is not None else []))
    if op == "unbind":  # q, k, v = qkv.unbind(0): Split into size-1 slices, each squeezed
        dim = _arg(args, kw, 1, "dim", 0)
        count = args[0].type.shape[dim]
        parts = [b.fresh(f"{node.name}_{i}") for i in range(count)]
        b.emit("Split", [x], parts, axis=dim, num_outputs=count)
        return [b.emit("Squeeze", [part, int_list(b, dim)]) for part in parts]
    if op == "select":
        index = b.const("index", np.array(_arg(args, kw, 2, "index"), np.int64))  # a scalar: the axis goes away
        return b.emit("Gather", [x, index], axis=_arg(args, kw, 1, "dim"))
    if op == "layer_norm":
        shape = _arg(args, kw, 1, "normalized_shape")
        weight, bias = _arg(args, kw, 2, "weight"), _arg(args, kw, 3, "bias")
        return _layer_norm(b, x, len(shape), _optional(b, weight), _optional(b, bias),
                           float(_arg(args, kw, 4, "eps", 1e-5)), node)
    if op == "scaled_dot_product_attention":
        return _attention(b, node, args, kw)
    if op in ("softmax", "_softmax"):
        return b.emit("Softmax", [x], axis=_arg(args, kw, 1, "dim"))
    if op == "gelu":
        return b.emit("Gelu", [x], approximate=_arg(args, kw, 1, "approximate", "none"))
    if op in ("matmul", "bmm"):
        return b.emit("MatMul", [x, b.value(args[1])])
    if op == "embedding":
        call = embedding_call(node)
        _plain_embedding(node, call)
        inputs = b.graph.inputs(node)
        return b.emit("Gather", [b.value(inputs[call[k].index]) for k in ("table", "ids")], axis=0)
    raise AssertionError(op)


def tensor_index(b: Builder, node: Node, x: str, index: Any) -> str:
    """``x[index]`` for ints, slices with constant bounds, ``...``, ``None`` and one int64 index tensor
    (``table[idx]``, as in relative position biases): Slice, Gather per int, Gather by the tensor (its
    axis becomes the index's shape, as in torch), Unsqueeze for each None."""
    items = list(index) if isinstance(index, tuple) else [index]
    tensors = [i for i in items if isinstance(i, Node)]
    if len(tensors) > 1 or any(getattr(t.type, "dtype", None) != "i64" for t in tensors) or (
            tensors and any(isinstance(i, int) for i in items)):
        raise QCompileError(f"%{node.name}: indexing with several index tensors, a mask, or an index tensor beside "
                            "ints is not exported to ONNX yet", hint="index with one int64 tensor and slices")
    if any(isinstance(item, slice) and any(isinstance(v, Node) for v in (item.start, item.stop, item.step))
           for item in items):
        raise QCompileError(f"%{node.name}: a slice whose bounds are computed is not exported to ONNX yet",
                            hint="slice with constant bounds, or keep the slice out of the export")
    rank = len(b.graph.inputs(node)[0].type.shape)
    if Ellipsis in items:
        at = items.index(Ellipsis)
        consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
        items = items[:at] + [slice(None)] * (rank - consumed) + items[at + 1:]
    on_input = [i for i in items if i is not None]  # the items that consume an input axis, in order
    starts, ends, axes, steps = [], [], [], []
    for axis, item in enumerate(on_input):
        if isinstance(item, slice) and item != slice(None):
            step = item.step or 1
            starts.append(item.start if item.start is not None else (0 if step > 0 else -1))
            ends.append(item.stop if item.stop is not None else (np.iinfo(np.int64).max if step > 0
                                                                 else np.iinfo(np.int64).min))
            axes.append(axis)
            steps.append(step)
    if axes:
        x = b.emit("Slice", [x] + [b.const(n, np.array(v, np.int64)) for n, v in
                                   (("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps))])
    for axis in reversed(range(len(on_input))):  # right to left, so earlier axes keep their numbers
        if isinstance(on_input[axis], int):
            x = b.emit("Gather", [x, b.const("index", np.array(on_input[axis], np.int64))], axis=axis)
        elif isinstance(on_input[axis], Node):
            x = b.emit("Gather", [x, b.value(on_input[axis])], axis=axis)
    if None in items:  # each None's place among the output axes
        position, new_axes = 0, []
        for item in items:
            if item is None:
                new_axes.append(position)
            position += 0 if isinstance(item, int) else len(item.type.shape) if isinstance(item, Node) else 1
        x = b.emit("Unsqueeze", [x, b.const("axes", np.array(new_axes, np.int64))])
    return x


def module_op(b: Builder, node: Node, x: str) -> str:
    """The ONNX value computing ``node``, an ``nn`` module of one of :data:`MODULE_OPS`."""
    a = node.attrs
    if node.op == "layer_norm":
        affine = a.get("elementwise_affine", True)
        params = [b.const(f"{node.name}_{k}", b.graph.param(node, k).float()) if affine and k in node.params else ""
                  for k in ("weight", "bias")]
        shape = a["normalized_shape"]
        rank = len(shape) if isinstance(shape, (list, tuple)) else 1
        return _layer_norm(b, x, rank, params[0], params[1], float(a.get("eps", 1e-5)), node)
    if node.op == "softmax":
        return b.emit("Softmax", [x], axis=a["dim"] if a.get("dim") is not None else -1)
    if node.op == "gelu":
        return b.emit("Gelu", [x], approximate=a.get("approximate", "none"))
    if node.op == "embedding":
        table = b.graph.param(node, "weight")
        if is_torch_quantized(table):
            return int8_rows(b, node, table, x)
        return b.emit("Gather", [b.const(f"{node.name}_weight", rows_as_read(table, a)), x], axis=0)
    raise AssertionError(node.op)


def _arange(b: Builder, node: Node, args: list) -> str:
    """``arange(end)``, ``arange(start, end[, step])``: Range over int64 scalars (a symbolic end stays symbolic)."""
    bounds = [0, *args, 1][-3:] if len(args) == 1 else [*args, 1][:3]
    if not all(isinstance(v, (int, Node)) and not isinstance(v, bool) for v in bounds):
        raise QCompileError(f"%{node.name}: arange over non-integers is not exported to ONNX yet")
    scalars = [b.value(v) if isinstance(v, Node) else b.const("bound", np.array(v, np.int64)) for v in bounds]
    out = b.emit("Range", scalars)
    if node.type.dtype != "i64":
        out = b.emit("Cast", [out], to=TensorProto.FLOAT if node.type.dtype == "f32" else TensorProto.INT32)
    return out


def int8_rows(b: Builder, node: Node, table: torch.Tensor, ids: str) -> str:
    """Rows of uint8 codes with a float scale and zero point each (``dynamic``): gathered, then
    ``code * scale - zero point * scale`` with each row's own pair, as torch's quantized embedding does."""
    scale = table.q_per_channel_scales().float()
    offset = -table.q_per_channel_zero_points().float() * scale
    rows = b.emit("Cast", [b.emit("Gather", [b.const(f"{node.name}_codes", integer_codes(table)), ids], axis=0)],
                  to=TensorProto.FLOAT)
    per_row = [b.emit("Gather", [b.const(f"{node.name}_{k}", v[:, None].contiguous()), ids], axis=0)
               for k, v in (("scale", scale), ("offset", offset))]
    return b.emit("Add", [b.emit("Mul", [rows, per_row[0]]), per_row[1]])


def _plain_embedding(node: Node, settings: dict) -> None:
    """A functional embedding lookup is a Gather of rows, unless max_norm renormalizes the rows it reads."""
    if settings.get("max_norm") is not None:
        raise QCompileError(f"%{node.name}: an embedding with max_norm is not exported to ONNX yet",
                            hint="max_norm rescales rows as they are read; renormalize the table once and drop it")


def _layer_norm(b: Builder, x: str, rank: int, weight: str, bias: str, eps: float, node: Node) -> str:
    if not weight:  # LayerNormalization needs a scale; no affine part is a scale of ones
        width = node.type.shape[-rank:] if node.type is not None else None
        if width is None:
            raise QCompileError(f"%{node.name}: layer norm without weights and without a known shape")
        weight = b.const(f"{node.name}_ones", np.ones(width, np.float32))
    return b.emit("LayerNormalization", [x, weight] + ([bias] if bias else []), axis=-rank, epsilon=eps)


def _attention(b: Builder, node: Node, args: list, kw: dict) -> str:
    q, k, v = (b.value(a) for a in args[:3])
    mask = _arg(args, kw, 3, "attn_mask")
    dropout = _arg(args, kw, 4, "dropout_p", 0.0)
    causal = _arg(args, kw, 5, "is_causal", False)
    scale = _arg(args, kw, 6, "scale")
    if dropout or causal or kw.get("enable_gqa"):
        raise QCompileError(f"%{node.name}: attention with dropout, is_causal or grouped queries is not "
                            "exported to ONNX yet", hint="pass an explicit attn_mask instead of is_causal")
    rank = len(args[0].type.shape)
    head_dim = args[0].type.shape[-1]
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(head_dim)
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    scores = b.emit("MatMul", [q, b.emit("Transpose", [k], perm=perm)])
    scores = b.emit("Mul", [scores, b.const("scale", np.array(scale, np.float32))])
    if isinstance(mask, Node):
        mask_value = b.value(mask)
        if isinstance(mask.type, TensorType) and mask.type.torch_dtype == torch.bool:
            # True = attend; a boolean mask becomes 0 / -inf added to the scores
            mask_value = b.emit("Where", [mask_value, b.const("zero", np.array(0, np.float32)),
                                          b.const("minus_inf", np.array(-np.inf, np.float32))])
        scores = b.emit("Add", [scores, mask_value])
    return b.emit("MatMul", [b.emit("Softmax", [scores], axis=-1), v])
