"""The driver for function and method calls: torch's quantized ops, then the registered emitters.

A call node is written by, in order: the quantized op it targets
(``torch.ops.quantized.add_relu`` and friends, on a ``native`` graph), the
emitter registered for its op name (:mod:`.registry`, :mod:`.function_ops`),
or torch's own exporter for a float op no emitter writes
(:mod:`.torch_written`); anything else is refused by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qcompile.errors import QCompileError
from qcompile.ir.node import Node
from qcompile.onnx import function_ops, torch_written
from qcompile.onnx.modules import _activation
from qcompile.onnx.registry import emitter
from qcompile.quant.relu6_grid import relu6_top_code

if TYPE_CHECKING:
    from qcompile.onnx.builder import Builder


def _quantized_op(b: Builder, node: Node, args: list) -> str | None:
    """``torch.ops.quantized.*`` of a native graph (None for one written by its op name instead)."""
    name = node.target.rsplit(".", 1)[1]
    x = function_ops.first(b, args)
    if name in ("add", "add_relu", "mul", "mul_relu"):
        out = b.emit(function_ops.BINARY[name.split("_")[0]], [b.value(args[0]), b.value(args[1])])
        return _activation(b, out, "relu" if name.endswith("relu") else None)
    if name == "cat":
        return b.emit("Concat", [b.value(t) for t in args[0]], axis=args[1])
    if name == "hardswish":
        return b.emit("HardSwish", [x])
    if name == "leaky_relu":  # (x, slope, inplace, scale, zero point)
        return b.emit("LeakyRelu", [x], alpha=float(args[1]))
    return None


def call(b: Builder, node: Node) -> str | list[str]:
    """The ONNX value(s) of a function or method call node."""
    args = b.args(node)
    if node.target.startswith("torch.ops.quantized."):
        out = _quantized_op(b, node, args)
        if out is not None:
            return out
    emit = emitter(node.op)
    out = emit(b, node, args, node.kwargs) if emit is not None else None
    if out is not None:
        return out
    if torch_written.writes(node):  # any other float op: as torch's own exporter writes it
        return torch_written.torch_written(b, node)
    raise QCompileError(f"%{node.name}: {node.target} is not exported to ONNX yet",
                        hint="keep that op out of the export, or register an emitter (qcompile.onnx.registry)")


def integer_relu6(b: Builder, node: Node, producer: Node, codes: str) -> str | None:
    """A ReLU6 that keeps its input's uint8 grid, as a Clip of the codes (None when it does not).

    ``QuantizeLinear(Clip(DequantizeLinear(q), 0, 6))`` equals
    ``Clip(q, zp, round(6 / s) + zp)`` on the codes, in one integer op that
    runtimes need not fuse; when the grid cannot hold values outside [0, 6]
    (zero point 0, 255 codes within 6) the clamp is dropped.
    """
    q, q_in = node.quant.qparams, producer.quant.qparams
    if (node.op != "relu6" or q is None or q_in is None or q.per_channel or q.dtype != "uint8"
            or q_in.dtype != "uint8" or float(q.scale) != float(q_in.scale)
            or int(q.zero_point) != int(q_in.zero_point)):
        return None
    zero, top = int(q.zero_point), relu6_top_code(q)
    if zero == 0 and top == 255:
        return codes
    return b.emit("Clip", [codes, b.const(f"{node.name}_lo", np.array(zero, np.uint8)),
                           b.const(f"{node.name}_hi", np.array(top, np.uint8))])
