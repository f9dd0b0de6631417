"""The graph's outputs in ONNX: one tensor, or each tensor of a returned tuple, list or dict."""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx
from onnx import TensorProto, helper

from qcompile.errors import QCompileError
from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind, Ref
from qcompile.ir.types import TensorType
from qcompile.onnx.inputs import dynamic_axes

if TYPE_CHECKING:
    from qcompile.onnx.builder import Builder


def output_values(graph: Graph) -> list[Node]:
    """The nodes whose values the graph returns: one, or each element of a returned tuple / list, or each
    value of a returned dict (torchvision's segmentation models return ``{"out": ..., "aux": ...}``)."""
    return [value for _, value in _named_outputs(graph)]


def _named_outputs(graph: Graph) -> list[tuple[str, Node]]:
    node = graph.output_node
    returned = node.args[0]
    if isinstance(returned, dict):  # keys as names; one an input already has gets a prefix
        taken = {n.name for n in graph.find(kind=NodeKind.INPUT)}
        named = [(f"output_{k}" if str(k) in taken else str(k), r) for k, r in returned.items()]
    elif isinstance(returned, (tuple, list)):
        named = [(f"output_{i}", r) for i, r in enumerate(returned)]
    else:
        named = [("output", returned)]
    inputs = graph.inputs(node)
    named = [(name, inputs[r.index] if isinstance(r, Ref) else r) for name, r in named]
    if not all(isinstance(v, Node) and isinstance(v.type, TensorType) for _, v in named):
        raise QCompileError(f"the model returns {node.type}; ONNX export takes a tensor, or a tuple, list or "
                            "dict of tensors", hint="return tensors from forward (wrap the model to drop other values)")
    return named


def graph_outputs(b: Builder) -> list[onnx.ValueInfoProto]:
    """Graph outputs ``output`` (one tensor), ``output_0``, ``output_1``, ... (a tuple) or the keys of a
    returned dict, batch dynamic.

    One output is declared ``[batch, static dims...]`` (``[batch, symbols...]``
    in a graph with dynamic axes besides the batch). Of several, only the
    rank is declared: the batch need not be their first axis (an LSTM's
    state is ``[layers, batch, hidden]``), and onnxruntime warns about a
    declared size that does not match when it loads the model.
    """
    named = _named_outputs(b.graph)
    names, values = [n for n, _ in named], [v for _, v in named]
    outputs = []
    for value, name in zip(values, names, strict=True):
        out = b.emit("Identity", [b.value(value)], [name])
        rank = len(value.type.shape)
        if len(values) > 1:
            shape = [f"{name}_{k}" for k in range(rank)]
        elif dynamic_axes(b.graph):  # which output axes follow the inputs' is not known
            shape = ["batch", *(f"{name}_{k}" for k in range(1, rank))]
        else:
            shape = ["batch", *value.type.shape[1:]]
        outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, shape))
    return outputs
