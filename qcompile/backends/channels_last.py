"""Both backends' convolutions return channels-last tensors: ``view`` cannot flatten them, ``reshape`` can.

torch's quantized convolutions and qcompile's kernels write NHWC memory, so a
``view`` over their output (``x.view(x.size(0), -1)`` before a classifier)
fails where the float model's worked. Lowering rewrites it as the
``reshape`` it stands for (the same values; a copy only where needed)::

    %view = view(%conv_layers_8, %size, -1) : ...
    %view = reshape(%conv_layers_8, %size, -1) : ...

The same holds after the quantized region: torch's ``DeQuantize`` keeps the
layout, and so does a float convolution on it (a layer kept float with
``--skip``), so float views downstream of a dequantize are rewritten too.
"""

from __future__ import annotations

from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind


def view_as_reshape(node: Node) -> bool:
    """Rewrite a ``view`` (the tensor method, or torch.export's ``aten.view``) as ``reshape``; whether it was one."""
    if node.kind == NodeKind.METHOD and node.target == "view":
        node.target = node.op = "reshape"
    elif node.kind == NodeKind.FUNCTION and node.target == "torch.ops.aten.view.default":
        node.target, node.op = "torch.ops.aten.reshape.default", "reshape"
    else:
        return False
    return True


def views_after_dequantize(graph: Graph) -> int:
    """Rewrite every ``view`` that a dequantize's value reaches as ``reshape``; return how many."""
    rewritten, seen = 0, set()
    frontier = [n for n in graph.nodes() if n.op == "dequantize"]
    while frontier:
        node = frontier.pop()
        for user, _ in graph.uses(node):
            if user.name not in seen:
                seen.add(user.name)
                rewritten += view_as_reshape(user)
                frontier.append(user)
    return rewritten
