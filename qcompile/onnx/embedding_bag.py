"""ONNX for ``nn.EmbeddingBag``: the rows of each bag gathered, then summed, averaged or maxed.

Bags of a fixed size (ids ``[bags, size]``) reduce over axis 1. Bags given
by offsets (ids ``[n]``, offsets ``[bags]``, or ``[bags + 1]`` with
``include_last_offset``) have no segment reduction in ONNX: each id's bag is
the number of offsets at or before its position, less one, and
``ScatterElements`` adds its row into that bag (or keeps the larger, for a
max); a mean divides by each bag's length, and an empty bag stays 0, as in
torch. A ``padding_idx`` leaves its ids out: their rows are zeros, a mean
does not count them, a max does not see them (a bag of padding alone is 0).
Per-sample weights scale the rows first. int8 tables (``dynamic``) are read as
:func:`qcompile.onnx.sequence_ops.int8_rows` reads them; a float table with
``max_norm`` is written with every row renormalized once, which reads the
same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from onnx import TensorProto, helper

from qcompile.backends.torch_ao.tensors import is_torch_quantized
from qcompile.errors import QCompileError
from qcompile.ir.node import Node
from qcompile.onnx.sequence_ops import int8_rows, int_list, int_slice
from qcompile.quant.embedding import rows_as_read

if TYPE_CHECKING:
    from qcompile.onnx.builder import Builder

_REDUCTIONS = {"sum": "ReduceSum", "mean": "ReduceMean", "max": "ReduceMax"}
_ID_TYPES = {"i64": TensorProto.INT64, "i32": TensorProto.INT32}


def embedding_bag(b: Builder, node: Node) -> str:
    """The ONNX value of an ``nn.EmbeddingBag`` node (float, or an int8 table from ``dynamic``)."""
    args, kw, a = b.args(node), b.kwargs(node), node.attrs
    ids = args[0]
    offsets = args[1] if len(args) > 1 else kw.get("offsets")
    weights = args[2] if len(args) > 2 else kw.get("per_sample_weights")
    mode = a.get("mode", "mean")
    rank = len(ids.type.shape)
    if (offsets is None) != (rank == 2):
        raise QCompileError(f"%{node.name}: an EmbeddingBag of {rank}-D ids"
                            f"{' with offsets' if offsets is not None else ' without offsets'} "
                            "is not exported to ONNX yet",
                            hint="give it ids [bags, ids per bag] without offsets, or 1-D ids with offsets")
    table = b.graph.param(node, "weight")
    x = b.value(ids)
    rows = (int8_rows(b, node, table, x) if is_torch_quantized(table)
            else b.emit("Gather", [b.const(f"{node.name}_weight", rows_as_read(table, a)), x], axis=0))
    if weights is not None:
        rows = b.emit("Mul", [rows, b.emit("Unsqueeze", [b.value(weights), int_list(b, [-1])])])
    kept = None
    if a.get("padding_idx") is not None:  # padding ids leave the bag: zero rows, not counted, not maxed
        padding = b.const("padding_id", np.array(a["padding_idx"], helper.tensor_dtype_to_np_dtype(
            _ID_TYPES[ids.type.dtype])))
        kept = b.emit("Not", [b.emit("Equal", [x, padding])])
        rows = b.emit("Mul", [rows, b.emit("Unsqueeze", [b.emit("Cast", [kept], to=TensorProto.FLOAT),
                                                          int_list(b, [-1])])])
    if offsets is None:
        return _fixed_bags(b, rows, mode, kept)
    return _segments(b, node, x, b.value(offsets), rows, mode, kept)


def _fixed_bags(b: Builder, rows: str, mode: str, kept: str | None) -> str:
    """Rows ``[bags, ids per bag, width]`` reduced over each bag; ``kept`` (bool ``[bags, ids]``) marks ids
    that are not padding."""
    axis = int_list(b, [1])
    if kept is None or mode == "sum":  # padding rows are zeros already
        return b.emit(_REDUCTIONS[mode], [rows, axis], keepdims=0)
    if mode == "mean":
        counts = b.emit("ReduceSum", [b.emit("Cast", [kept], to=TensorProto.FLOAT), axis], keepdims=1)
        sums = b.emit("ReduceSum", [rows, axis], keepdims=0)
        return b.emit("Div", [sums, b.emit("Max", [counts, b.const("one", np.array(1, np.float32))])])
    largest = b.emit("ReduceMax", [_without_padding(b, rows, kept), axis], keepdims=0)
    return _nothing_seen_is_zero(b, largest)


def _without_padding(b: Builder, rows: str, kept: str | None) -> str:
    """``rows`` with padding ids' rows at -inf, for a max that does not see them."""
    if kept is None:
        return rows
    lowest = b.const("minus_inf", np.array(-np.inf, np.float32))
    return b.emit("Where", [b.emit("Unsqueeze", [kept, int_list(b, [-1])]), rows, lowest])


def _nothing_seen_is_zero(b: Builder, largest: str) -> str:
    """A max over no row (an empty bag, a bag of padding alone) is -inf here and 0 in torch."""
    zero = b.const("zero_f", np.array(0, np.float32))
    return b.emit("Where", [b.emit("IsInf", [largest], detect_positive=0), zero, largest])


def _segments(b: Builder, node: Node, ids: str, offsets: str, rows: str, mode: str, kept: str | None) -> str:
    """Rows ``[n, width]`` summed, averaged or maxed into the bags that ``offsets`` start; ``kept`` (bool
    ``[n]``) marks ids that are not padding."""
    count = b.emit("Shape", [ids])  # [n]
    ends = int_slice(b, offsets, 1, np.iinfo(np.int64).max)
    if node.attrs.get("include_last_offset", False):
        offsets = int_slice(b, offsets, 0, -1)
    else:
        ends = b.emit("Concat", [ends, count], axis=0)
    positions = b.emit("Range", [b.const("zero", np.array(0, np.int64)), b.emit("Squeeze", [count]),
                                 b.const("one", np.array(1, np.int64))])
    started = b.emit("GreaterOrEqual", [b.emit("Unsqueeze", [positions, int_list(b, [1])]),
                                        b.emit("Unsqueeze", [offsets, int_list(b, [0])])])  # [n, bags]
    bag = b.emit("Sub", [b.emit("ReduceSum", [b.emit("Cast", [started], to=TensorProto.INT64), int_list(b, [1])],
                                keepdims=0), b.const("one", np.array(1, np.int64))])
    width = int_list(b, [node.attrs["embedding_dim"]])
    index = b.emit("Expand", [b.emit("Unsqueeze", [bag, int_list(b, [1])]), b.emit("Concat", [count, width], axis=0)])
    bags = b.emit("Shape", [offsets])
    if mode == "max":  # each bag's largest value per column, from -inf
        lowest = b.emit("ConstantOfShape", [b.emit("Concat", [bags, width], axis=0)],
                        value=helper.make_tensor("minus_inf", TensorProto.FLOAT, [1], [-np.inf]))
        largest = b.emit("ScatterElements", [lowest, index, _without_padding(b, rows, kept)], axis=0,
                         reduction="max")
        return _nothing_seen_is_zero(b, largest)
    zeros = b.emit("ConstantOfShape", [b.emit("Concat", [bags, width], axis=0)],
                   value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
    sums = b.emit("ScatterElements", [zeros, index, rows], axis=0, reduction="add")
    if mode == "sum":
        return sums
    if kept is None:
        lengths = b.emit("Cast", [b.emit("Sub", [ends, offsets])], to=TensorProto.FLOAT)
    else:  # the ids of each bag that are not padding
        lengths = b.emit("ScatterElements", [b.emit("ConstantOfShape", [bags], value=helper.make_tensor(
            "zero", TensorProto.FLOAT, [1], [0.0])), bag, b.emit("Cast", [kept], to=TensorProto.FLOAT)],
            axis=0, reduction="add")
    lengths = b.emit("Max", [lengths, b.const("one", np.array(1, np.float32))])  # an empty bag: 0 / 1
    return b.emit("Div", [sums, b.emit("Unsqueeze", [lengths, int_list(b, [1])])])
