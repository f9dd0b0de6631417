"""The qcompile IR: graph, nodes, types, printing, drawing and verification."""

from qcompile.ir.draw import to_dot, to_svg
from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind, QuantAnnotation, Ref, SourceInfo
from qcompile.ir.printer import print_graph
from qcompile.ir.types import NoneType, ScalarType, TensorType, TupleType, type_of
from qcompile.ir.verify import verify

__all__ = [
    "Graph", "Node", "NodeKind", "QuantAnnotation", "Ref", "SourceInfo",
    "TensorType", "ScalarType", "TupleType", "NoneType", "type_of",
    "print_graph", "to_dot", "to_svg", "verify",
]
