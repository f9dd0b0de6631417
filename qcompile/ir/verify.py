"""Structural checks of a graph, run between passes.

A failure here means a pass left the graph broken; the message names the
node and shows it in context.
"""

from __future__ import annotations

from qcompile.errors import VerifyError
from qcompile.ir.graph import Graph
from qcompile.ir.modules import FUSED_ACTIVATIONS, ctor_defaults
from qcompile.ir.node import Node, NodeKind, collect_refs
from qcompile.ir.printer import excerpt
from qcompile.ir.targets import resolve_target


def _fail(graph: Graph, node: Node, problem: str) -> VerifyError:
    return VerifyError(f"%{node.name}: {problem}\n{excerpt(graph, node)}")


def verify(graph: Graph) -> None:
    """Raise :class:`VerifyError` on the first broken invariant.

    Checks: the graph is acyclic; it has one output node and nothing reads it;
    inputs and params take no inputs; input ports are numbered 0..n-1 and each
    is referenced by an argument; every parameter reference resolves; MODULE
    nodes name an importable class and only its constructor arguments.
    """
    nodes = graph.nodes()  # raises on a cycle
    _ = graph.output_node  # raises unless exactly one
    for node in nodes:
        _verify_node(graph, node)


def _verify_node(graph: Graph, node: Node) -> None:
    inputs = graph.inputs(node)
    if node.kind in (NodeKind.INPUT, NodeKind.PARAM) and inputs:
        raise _fail(graph, node, f"a {node.kind.value} node takes no inputs")
    if node.kind == NodeKind.OUTPUT and graph.users(node):
        raise _fail(graph, node, "nothing may read the output node")
    ports = graph.input_ports(node)
    if ports != list(range(len(ports))):
        raise _fail(graph, node, f"input ports are {ports}, expected 0..{len(ports) - 1}")
    referenced = {r.index for r in collect_refs((node.args, node.kwargs))}
    if referenced != set(range(len(inputs))):
        raise _fail(
            graph,
            node,
            f"arguments refer to ports {sorted(referenced)} but the node has {len(inputs)} inputs",
        )
    for key, name in node.params.items():
        if name not in graph.params:
            raise _fail(graph, node, f"parameter ${name} (for '{key}') does not exist")
    if node.kind == NodeKind.PARAM and node.target not in graph.params:
        raise _fail(graph, node, f"parameter ${node.target} does not exist")
    if node.kind == NodeKind.MODULE:
        try:
            cls = resolve_target(node.target)
        except (ImportError, AttributeError):
            raise _fail(graph, node, f"module class {node.target} cannot be imported") from None
        unknown = set(node.attrs) - set(ctor_defaults(cls))
        if unknown:
            raise _fail(graph, node, f"unknown attributes {sorted(unknown)} for {node.target}")
    if node.act is not None and node.act not in FUSED_ACTIVATIONS:
        raise _fail(graph, node, f"fused activation {node.act!r} is not one of {', '.join(FUSED_ACTIVATIONS)}")

