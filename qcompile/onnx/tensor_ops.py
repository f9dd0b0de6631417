"""Element-wise and reduction calls on tensors as ONNX ops: clamp, abs, exp, ..., sum, amax, stack, log_softmax.

These are torch functions and tensor methods (``torch.clamp(x, 0, 1)``,
``x.abs()``, ``x.sum(dim=1)``) and their torch.export ATen forms, which
take the same arguments in the same order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qcompile.ir.node import Node
from qcompile.onnx.sequence_ops import _arg, int_list, int_slice

if TYPE_CHECKING:
    from qcompile.onnx.export import _Builder

_UNARY = {"abs": "Abs", "neg": "Neg", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "reciprocal": "Reciprocal",
          "floor": "Floor", "ceil": "Ceil", "sign": "Sign", "erf": "Erf"}
_REDUCTIONS = {"sum": "ReduceSum", "mean": "ReduceMean", "amax": "ReduceMax", "amin": "ReduceMin",
               "prod": "ReduceProd"}
FUNCTION_OPS = (*_UNARY, *_REDUCTIONS, "clamp", "clip", "rsqrt", "stack", "log_softmax", "_log_softmax",
                "pixel_shuffle", "max", "min")


def function_op(b: _Builder, node: Node, args: list, kw: dict) -> str:
    """The ONNX value computing ``node``, a call of one of :data:`FUNCTION_OPS`."""
    op = node.op
    if op == "stack":  # torch.stack(tensors, dim): each unsqueezed at dim, then concatenated
        tensors, dim = args[0], _arg(args, kw, 1, "dim", 0)
        dim = dim % (len(tensors[0].type.shape) + 1)
        axes = int_list(b, dim)
        return b.emit("Concat", [b.emit("Unsqueeze", [b.value(t), axes]) for t in tensors], axis=dim)
    x = b.value(args[0])
    if op in _UNARY:
        return b.emit(_UNARY[op], [x])
    if op == "rsqrt":
        return b.emit("Reciprocal", [b.emit("Sqrt", [x])])
    if op in ("clamp", "clip"):  # bounds may be None (one-sided)
        bounds = [_arg(args, kw, 1, "min"), _arg(args, kw, 2, "max")]
        return b.emit("Clip", [x] + ["" if v is None else b.const("bound", np.array(v, np.float32)) for v in bounds])
    if op in _REDUCTIONS:
        dims = _arg(args, kw, 1, "dim")
        keep = int(bool(_arg(args, kw, 2, "keepdim", False)))
        if dims is None:  # every axis, to a scalar
            return b.emit(_REDUCTIONS[op], [x], keepdims=keep)
        return b.emit(_REDUCTIONS[op], [x, int_list(b, dims)], keepdims=keep)
    if op in ("max", "min"):
        return _extreme(b, node, x, args, kw)
    if op in ("log_softmax", "_log_softmax"):
        return b.emit("LogSoftmax", [x], axis=_arg(args, kw, 1, "dim"))
    if op == "pixel_shuffle":
        return b.emit("DepthToSpace", [x], blocksize=_arg(args, kw, 1, "upscale_factor"), mode="CRD")
    raise AssertionError(op)


def _extreme(b: _Builder, node: Node, x: str, args: list, kw: dict) -> str | list[str]:
    """``torch.max(x)`` (a scalar), ``torch.max(x, y)`` (element-wise) or ``x.max(dim)``: [values, indices]."""
    other = _arg(args, kw, 1, "dim")
    if other is None:
        return b.emit("ReduceMax" if node.op == "max" else "ReduceMin", [x], keepdims=0)
    if isinstance(other, Node):
        return b.emit("Max" if node.op == "max" else "Min", [x, b.value(other)])
    keep = int(bool(_arg(args, kw, 2, "keepdim", False)))
    values = b.emit("ReduceMax" if node.op == "max" else "ReduceMin", [x, int_list(b, other)], keepdims=keep)
    # torch returns the first index of the extreme value, as select_last_index=0 does
    indices = b.emit("ArgMax" if node.op == "max" else "ArgMin", [x], axis=other, keepdims=keep)
    return [values, indices]


def flatten(b: _Builder, x: str, rank: int, start: int, end: int) -> str:
    """``torch.flatten(x, start, end)``. ONNX's Flatten always gives 2-D ``[d0 * ... * d(k-1), rest]``,
    which is torch's only for ``start=1, end=-1``; otherwise a Reshape keeps the axes around the run."""
    start, end = start % rank, end % rank
    if (start, end) == (1, rank - 1):
        return b.emit("Flatten", [x], axis=1)
    shape = b.emit("Shape", [x])
    parts = ([int_slice(b, shape, 0, start)] if start > 0 else []) + [int_list(b, -1)]
    if end + 1 < rank:
        parts.append(int_slice(b, shape, end + 1, rank))
    return b.emit("Reshape", [x, b.emit("Concat", parts, axis=0)])
