"""Activations with settings (a leaky ReLU's slope, an ELU's alpha), read the same way from every form.

``nn.LeakyReLU(0.2)`` holds its slope as a module attribute,
``F.leaky_relu(x, 0.2)`` as an argument (positional or by name), and
torch.export's ``aten.leaky_relu(x, 0.2)`` positionally. :func:`node_settings`
gives the same dict for all three, defaults filled in, for the passes that
quantize these ops and for the ONNX export.
"""

from __future__ import annotations

from qcompile.ir.node import Node, NodeKind

# name, default, in the order of F.<op>'s arguments after the input; nn modules hold them as attributes of
# the same names
SETTINGS = {"leaky_relu": (("negative_slope", 0.01),), "elu": (("alpha", 1.0),), "celu": (("alpha", 1.0),),
            "hardtanh": (("min_val", -1.0), ("max_val", 1.0)), "softplus": (("beta", 1.0), ("threshold", 20.0))}


def activation_settings(op: str, args: list, kw: dict) -> dict:
    """An activation's settings from a functional call's arguments after the input (defaults filled in)."""
    return {name: args[i] if i < len(args) else kw.get(name, default)
            for i, (name, default) in enumerate(SETTINGS.get(op, ()))}


def node_settings(node: Node) -> dict:
    """The settings of an activation node, module or call (defaults filled in)."""
    if node.kind == NodeKind.MODULE:
        return {name: node.attrs.get(name, default) for name, default in SETTINGS.get(node.op, ())}
    return activation_settings(node.op, list(node.args[1:]), node.kwargs)
