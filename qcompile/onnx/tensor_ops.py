"""Element-wise and reduction calls on tensors as ONNX ops: clamp, abs, exp, ..., sum, amax, stack, log_softmax,
einsum.

These are torch functions and tensor methods (``torch.clamp(x, 0, 1)``,
``x.abs()``, ``x.sum(dim=1)``) and their torch.export ATen forms, which
take the same arguments in the same order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qcompile.errors import QCompileError
from qcompile.ir.node import Node
from qcompile.ir.padding import module_padding
from qcompile.onnx.sequence_ops import _arg, int_list, int_slice

if TYPE_CHECKING:
    from qcompile.onnx.builder import Builder

_UNARY = {"abs": "Abs", "neg": "Neg", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "reciprocal": "Reciprocal",
          "floor": "Floor", "ceil": "Ceil", "sign": "Sign", "erf": "Erf"}
_REDUCTIONS = {"sum": "ReduceSum", "mean": "ReduceMean", "amax": "ReduceMax", "amin": "ReduceMin",
               "prod": "ReduceProd"}
FUNCTION_OPS = (*_UNARY, *_REDUCTIONS, "clamp", "clip", "rsqrt", "stack", "log_softmax", "_log_softmax",
                "pixel_shuffle", "pixel_unshuffle", "max", "min", "einsum", "pad", "roll", "linalg_vector_norm", "clamp_min", "clamp_max", "normalize")


def function_op(b: Builder, node: Node, args: list, kw: dict) -> str:
    """The ONNX value computing ``node``, a call of one of :data:`FUNCTION_OPS`."""
    op = node.op
    if op == "stack":  # torch.stack(tensors, dim): each unsqueezed at dim, then concatenated
        tensors, dim = args[0], _arg(args, kw, 1, "dim", 0)
        dim = dim % (len(tensors[0].type.shape) + 1)
        axes = int_list(b, dim)
        return b.emit("Concat", [b.emit("Unsqueeze", [b.value(t), axes]) for t in tensors], axis=dim)
    if op == "einsum":  # torch.einsum(eq, a, b) or, from torch.export, (eq, [a, b])
        operands = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
        return b.emit("Einsum", [b.value(t) for t in operands], equation=onnx_equation(args[0]))
    x = b.value(args[0])
    if op == "pad":
        return _pad(b, node, x, args, kw)
    if op == "roll":
        return _roll(b, node, x, args, kw)
    if op == "normalize":  # F.normalize(x, p, dim, eps): x / max(norm, eps)
        order, dim, eps = _arg(args, kw, 1, "p", 2.0), _arg(args, kw, 2, "dim", 1), _arg(args, kw, 3, "eps", 1e-12)
        if order not in (1, 2):
            raise QCompileError(f"%{node.name}: F.normalize with p={order} is not exported to ONNX yet")
        norm = b.emit("ReduceL2" if order == 2 else "ReduceL1", [x, int_list(b, dim)], keepdims=1)
        return b.emit("Div", [x, b.emit("Max", [norm, b.const("eps", np.array(eps, np.float32))])])
    if op == "linalg_vector_norm":  # F.normalize's norm (Swin V2's cosine attention): 1- and 2-norms
        order, dims = _arg(args, kw, 1, "ord", 2), _arg(args, kw, 2, "dim")
        if order not in (1, 2):
            raise QCompileError(f"%{node.name}: a vector norm of order {order} is not exported to ONNX yet")
        keep = int(bool(_arg(args, kw, 3, "keepdim", False)))
        reduce = "ReduceL2" if order == 2 else "ReduceL1"
        return b.emit(reduce, [x] + ([int_list(b, dims)] if dims is not None else []), keepdims=keep)
    if op in _UNARY:
        return b.emit(_UNARY[op], [x])
    if op == "rsqrt":
        return b.emit("Reciprocal", [b.emit("Sqrt", [x])])
    if op in ("clamp", "clip", "clamp_min", "clamp_max"):  # bounds may be None (one-sided)
        bounds = [_arg(args, kw, 1, "min"), _arg(args, kw, 2, "max")]
        if op != "clamp" and op != "clip":  # aten.clamp_min(x, low), aten.clamp_max(x, high)
            bounds = [args[1], None] if op == "clamp_min" else [None, args[1]]
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
    if op == "pixel_unshuffle":
        return pixel_unshuffle(b, node, x, _arg(args, kw, 1, "downscale_factor"))
    raise AssertionError(op)


def pixel_unshuffle(b: Builder, node: Node, x: str, factor: int) -> str:
    """``F.pixel_unshuffle(x, r)``: channel ``c r^2 + i r + j`` holds pixel ``(i, j)`` of each r x r block of
    channel ``c``. ONNX's SpaceToDepth orders them ``(i r + j) C + c`` (phase first), so this is written
    as Reshape [N, C, H/r, r, W/r, r], Transpose and Reshape; the batch axis may vary."""
    *lead, channels, height, width = b.graph.inputs(node)[0].type.shape
    if len(lead) != 1 or not all(isinstance(d, int) for d in (channels, height, width)):
        raise QCompileError(f"%{node.name}: pixel_unshuffle of a tensor other than [N, C, H, W] of fixed C, H, W "
                            "is not exported to ONNX yet")
    blocks = b.const("shape", np.array([0, channels, height // factor, factor, width // factor, factor], np.int64))
    moved = b.emit("Transpose", [b.emit("Reshape", [x, blocks])], perm=[0, 1, 3, 5, 2, 4])
    merged = np.array([0, channels * factor * factor, height // factor, width // factor], np.int64)
    return b.emit("Reshape", [moved, b.const("shape", merged)])


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _pad(b: Builder, node: Node, x: str, args: list, kw: dict) -> str:
    """``F.pad(x, (left, right, top, bottom, ...), mode, value)``: torch lists the last axis first, in
    (begin, end) pairs; ONNX's Pad takes every axis's begins, then every axis's ends."""
    widths, mode, value = _arg(args, kw, 1, "pad"), _arg(args, kw, 2, "mode", "constant"), _arg(args, kw, 3, "value")
    return pad(b, node, x, widths, mode, value)


def pad_module(b: Builder, node: Node, x: str) -> str:
    """A padding module (``nn.ZeroPad2d((0, 1, 0, 1))``, ``nn.ReflectionPad1d(2)``...) as :func:`pad`."""
    return pad(b, node, x, *module_padding(node))


def pad(b: Builder, node: Node, x: str, widths, mode: str, value) -> str:
    """ONNX Pad for torch's ``(last axis begin, end, axis before it begin, end, ...)`` widths."""
    if any(isinstance(w, Node) for w in widths) or mode not in _PAD_MODES:
        raise QCompileError(f"%{node.name}: a pad of computed widths or in mode {mode!r} is not exported to ONNX yet")
    rank = len(b.graph.inputs(node)[0].type.shape)
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(widths) // 2):
        begins[rank - 1 - i], ends[rank - 1 - i] = widths[2 * i], widths[2 * i + 1]
    inputs = [x, b.const("pads", np.array(begins + ends, np.int64))]
    if mode == "constant" and value:
        inputs.append(b.const("pad_value", np.array(value, np.float32)))
    return b.emit("Pad", inputs, mode=_PAD_MODES[mode])


def _roll(b: Builder, node: Node, x: str, args: list, kw: dict) -> str:
    """``torch.roll(x, shifts, dims)`` (Swin's shifted windows): per axis, the last ``shift`` entries moved
    to the front, as two Slices and a Concat; the axes' sizes are fixed in the file."""
    shifts, dims = _arg(args, kw, 1, "shifts"), _arg(args, kw, 2, "dims")
    shifts = list(shifts) if isinstance(shifts, (list, tuple)) else [shifts]
    if dims is None or dims == []:
        raise QCompileError(f"%{node.name}: torch.roll over the flattened tensor (no dims) is not exported to ONNX yet")
    dims = list(dims) if isinstance(dims, (list, tuple)) else [dims]
    shape = b.graph.inputs(node)[0].type.shape
    for shift, dim in zip(shifts, dims, strict=True):
        size = shape[dim]
        if isinstance(shift, Node) or not isinstance(size, int):
            raise QCompileError(f"%{node.name}: torch.roll by a computed shift or along a dynamic axis is not "
                                "exported to ONNX yet")
        cut = size - shift % size
        if cut == size:
            continue
        tail, head = (b.emit("Slice", [x, int_list(b, start), int_list(b, stop), int_list(b, dim)])
                      for start, stop in ((cut, size), (0, cut)))
        x = b.emit("Concat", [tail, head], axis=dim)
    return x


def onnx_equation(equation: str) -> str:
    """A torch einsum equation in ONNX's spelling: no spaces, each subscript letter (torch takes both
    cases) renamed to a lower-case one, in order of appearance."""
    letters: dict[str, str] = {}
    out = []
    for ch in equation.replace(" ", ""):
        if ch.isalpha():
            if ch not in letters:
                if len(letters) == 26:
                    raise QCompileError(f"einsum {equation!r} uses more than 26 subscripts; ONNX's Einsum takes a-z")
                letters[ch] = chr(ord("a") + len(letters))
            ch = letters[ch]
        out.append(ch)
    return "".join(out)


def _extreme(b: Builder, node: Node, x: str, args: list, kw: dict) -> str | list[str]:
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


def flatten(b: Builder, x: str, rank: int, start: int, end: int) -> str:
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
