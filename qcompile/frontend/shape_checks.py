"""Folding the shape checks tracing keeps: a rank read, compared with a constant, asserted.

torch.fx records a model's own input checks as graph nodes; timm's layers
(``BatchNormAct2d``, ``Linear`` wrappers) open with
``_assert(x.ndim == 4, ...)``. With the example inputs run, every tensor's
rank is known, so the check is decided when lowering: a check that holds is
removed, one that fails is the user's error with the model's own message.
What remains is the model's arithmetic, which the passes and the ONNX
export understand. Before and after (timm's EfficientNet-B0)::

    %conv_stem = conv2d(%x, $conv_stem.weight) : f32[1,32,112,112]
    %getattr_1 = getattr(%conv_stem, 'ndim') : int
    %eq        = eq(%getattr_1, 4) : bool
    %assert_   = _assert(%eq, 'expected 4D input (got Proxy(getattr_2)D input)') : none
    %batch_norm = batch_norm(%conv_stem, ...)

    %conv_stem = conv2d(%x, $conv_stem.weight) : f32[1,32,112,112]
    %bn1       = batch_norm2d(%conv_stem, $bn1.{weight,bias,running_mean,running_var,num_batches_tracked})

Only ranks are folded (``x.ndim``, ``x.dim()``): sizes can vary between calls
(the batch, ``--dynamic-axes``) and stay as they are.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from qcompile.errors import LoweringError
from qcompile.ir.types import TensorType, ValueType

_COMPARISONS = {operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge,
                operator.not_, operator.and_, operator.or_}
_ASSERTS = {torch._assert, torch._assert_async} if hasattr(torch, "_assert_async") else {torch._assert}


def _rank(node: fx.Node, types: dict[fx.Node, ValueType]) -> int | None:
    """The rank of the tensor ``node`` reads a rank of (``x.ndim``, ``x.dim()``), else None."""
    if node.op == "call_function" and node.target is getattr and len(node.args) == 2 and node.args[1] == "ndim":
        source = node.args[0]
    elif node.op == "call_method" and node.target == "dim" and len(node.args) == 1 and not node.kwargs:
        source = node.args[0]
    else:
        return None
    value_type = types.get(source) if isinstance(source, fx.Node) else None
    return len(value_type.shape) if isinstance(value_type, TensorType) else None


def _constant_args(node: fx.Node) -> bool:
    return not node.kwargs and not any(isinstance(a, fx.Node) for a in node.args)


def _replace(node: fx.Node, value) -> None:
    for user in list(node.users):
        user.args = fx.node.map_arg(user.args, lambda n: value if n is node else n)
        user.kwargs = fx.node.map_arg(user.kwargs, lambda n: value if n is node else n)
    node.graph.erase_node(node)


def fold_shape_checks(gm: fx.GraphModule, types: dict[fx.Node, ValueType]) -> int:
    """Fold rank reads, comparisons of constants and asserts of constants in ``gm``; return how many nodes went.

    Raises:
        LoweringError: an assert that fails on the example inputs (the model's own message).
    """
    folded = 0
    for node in list(gm.graph.nodes):
        rank = _rank(node, types)
        if rank is not None:
            _replace(node, rank)
        elif node.op == "call_function" and node.target in _COMPARISONS and _constant_args(node):
            _replace(node, node.target(*node.args))
        elif node.op == "call_function" and node.target in _ASSERTS and node.args and not isinstance(
                node.args[0], fx.Node):
            if not node.args[0]:
                message = node.args[1] if len(node.args) > 1 else "an assert in forward()"
                raise LoweringError(f"the model's own check fails on the example inputs: {message}",
                                    hint="pass the input shape the model expects (--input-shape)")
            if node.users:
                continue
            gm.graph.erase_node(node)
        else:
            continue
        folded += 1
    gm.graph.lint()
    return folded
