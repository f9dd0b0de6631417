"""Exported programs whose in-place ops write through aliases, made functional before lowering.

torch.export keeps in-place ATen ops (``relu_``, ``add_``, ``fill_``).
Lowering reads most of them as their functional forms (``relu_(x)`` as
``relu(x)``), which is exact when nothing else sees the mutated tensor: a
ReLU in place on a convolution's output that only it reads. It is wrong
when the op writes into a view of another tensor or into a tensor read
elsewhere: Swin's attention mask is built as ``mask = x.new_zeros(...)``
followed by ``mask[a:b, c:d] = k`` (``fill_`` on slices of ``mask``), and
read as plain ``fill`` the writes are lost (the lowered Swin-T differed from
the model by 2% of its output). Such a program is functionalized first
(:meth:`torch.export.ExportedProgram.run_decompositions` with every
decomposition removed, so ops stay as they are): the writes become
``slice_scatter`` / ``copy`` and the graph has no mutation at all.
"""

from __future__ import annotations

import torch
from torch import fx


def functional(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` itself when its in-place ops can be read as functional ones; otherwise functionalized."""
    if not writes_through_aliases(program.graph):
        return program
    table = torch.export.default_decompositions()
    for op in list(table.keys()):
        del table[op]  # keep every op as it is: only the mutations are rewritten
    return program.run_decompositions(table)


def writes_through_aliases(graph: fx.Graph) -> bool:
    """Whether an in-place op writes into a view, a graph input or buffer, or a tensor something else reads."""
    for node in graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        arguments = node.target._schema.arguments
        if not arguments or arguments[0].alias_info is None or not arguments[0].alias_info.is_write:
            continue
        written = node.args[0] if node.args else None
        if not isinstance(written, fx.Node):
            continue
        if written.op == "placeholder" or len(written.users) > 1 or _is_view(written):
            return True
    return False


def _is_view(node: fx.Node) -> bool:
    """``node`` returns an alias of its input (slice, view, select, transpose, ...)."""
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return False
    returns = node.target._schema.returns
    return bool(returns) and returns[0].alias_info is not None and not returns[0].alias_info.is_write
