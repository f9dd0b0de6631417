"""Dropping the ONNX nodes and initializers no output depends on."""

from __future__ import annotations

import onnx


def prune_unused(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto],
                 outputs: list[str]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes and initializers the outputs depend on (a ReLU6 on the codes leaves its input's
    DequantizeLinear unread, for one)."""
    needed, kept = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(reads(node))
    return kept[::-1], [i for i in initializers if i.name in needed]


def reads(node: onnx.NodeProto) -> set[str]:
    """The values ``node`` reads, with every name its subgraphs read (a Scan's body uses the weights
    of the graph around it); names a subgraph defines for itself come along, which is harmless."""
    names = {i for i in node.input if i}
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            for inner in attr.g.node:
                names |= reads(inner)
    return names
