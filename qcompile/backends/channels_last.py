"""Both backends' convolutions return channels-last tensors: ``view`` cannot flatten them, ``reshape`` can.

torch's quantized convolutions and qcompile's kernels write NHWC memory, so a
``view`` over their output (``x.view(x.size(0), -1)`` before a classifier)
fails where the float model's worked. Lowering rewrites it as the
``reshape`` it stands for (the same values; a copy only where needed)::

    %view = view(%conv_layers_8, %size, -1) : ...
    %view = reshape(%conv_layers_8, %size, -1) : ...
"""

from __future__ import annotations

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
