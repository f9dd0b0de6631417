"""Values the exported model would compute from constants alone, computed once and written as initializers.

Swin builds its attention masks in ``forward`` (``mask = x.new_zeros(...)``,
written through slices, compared, filled) and gathers its relative position
biases from a table with a fixed index; neither depends on the input's
values. Such nodes are run once here (with torch, as the interpreter would)
and their results written as initializers, so the file holds neither the
ops nor the need to export them. A node is constant when every value it
reads is a parameter or another constant tensor; ``x.new_zeros(size)`` and
its kin read ``x`` only for its type.
"""

from __future__ import annotations

import torch

from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind, map_refs
from qcompile.ir.targets import resolve_target
from qcompile.ir.types import TensorType, dtype_from_name

TYPE_ONLY = {"new_zeros", "new_ones", "new_full", "new_empty", "new_tensor"}  # read their tensor for its type only
_RANDOM = {"rand", "randn", "randint", "rand_like", "randn_like", "randint_like", "bernoulli", "dropout", "normal"}


def fold_constants(graph: Graph) -> dict[str, torch.Tensor | None]:
    """Constant nodes by name: the value of each one a non-constant node reads (to write as an
    initializer), None for the others (to leave out)."""
    values: dict[str, torch.Tensor] = {}
    for node in graph.nodes():
        if node.kind not in (NodeKind.FUNCTION, NodeKind.METHOD) or node.op in _RANDOM or node.quant.mode is not None \
                or not isinstance(node.type, TensorType):
            continue
        producers = graph.inputs(node)
        read = producers[1:] if node.op in TYPE_ONLY else producers
        if not all(p.kind == NodeKind.PARAM or p.name in values for p in read):
            continue
        values[node.name] = _run(graph, node, producers, values)
    frontier = {p.name for node in graph.nodes() if node.name not in values for p in graph.inputs(node)}
    return {name: (value if name in frontier else None) for name, value in values.items()}


@torch.no_grad()
def _run(graph: Graph, node: Node, producers: list[Node], values: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = []
    for i, p in enumerate(producers):
        if p.kind == NodeKind.PARAM:
            inputs.append(graph.params[p.target])
        elif p.name in values:
            inputs.append(values[p.name])
        else:  # the type-only input of new_zeros and kin
            assert i == 0 and node.op in TYPE_ONLY
            inputs.append(torch.empty(0, dtype=dtype_from_name(p.type.dtype)))
    args = map_refs(node.args, lambda ref: inputs[ref.index])
    kwargs = map_refs(node.kwargs, lambda ref: inputs[ref.index])
    if node.kind == NodeKind.FUNCTION:
        return resolve_target(node.target)(*args, **kwargs)
    return getattr(args[0], node.target)(*args[1:], **kwargs)
