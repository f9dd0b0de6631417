"""Lowering the neutral integer stage onto the ``gemmlowp`` backend: qcompile's own integer kernels.

The stage (:mod:`qcompile.integer.stage`) already holds every tensor the
kernels take, so lowering swaps each reference module for the kernel module
of the same name and arguments in :mod:`qcompile.kernels.modules`
(``torch.ops.qcompile.*``: the CPU twin, or CUDA); graph, tensors and grids
stay as they are, and the kernels compute bit for bit what the reference
modules compute. Before and after::

    %conv_layers_0 = conv2d(...) : u8[1,32,28,28] {..., target='qcompile.integer.reference.QConv2d'}
    %conv_layers_0 = conv2d(...) : u8[1,32,28,28] {..., target='qcompile.kernels.modules.QConv2d'}
"""

from __future__ import annotations

from qcompile.errors import QCompileError
from qcompile.integer import REFERENCE_MODULES
from qcompile.ir.graph import Graph
from qcompile.ir.node import NodeKind

REFERENCE = f"{REFERENCE_MODULES}."
KERNELS = "qcompile.kernels.modules."


def lower_to_gemmlowp(graph: Graph) -> dict[str, int]:
    """Put every module of the integer stage on its gemmlowp kernel; return how many of each."""
    import qcompile.kernels.modules as kernels

    counts: dict[str, int] = {}
    for node in graph.nodes():
        if node.kind != NodeKind.MODULE or not (node.target or "").startswith(REFERENCE):
            continue
        name = node.target.removeprefix(REFERENCE)
        if not hasattr(kernels, name):  # the stage and the kernels cover the same ops: a bug, not user input
            raise QCompileError(f"%{node.name}: the gemmlowp kernels have no module for {name}")
        node.target = KERNELS + name
        counts[name] = counts.get(name, 0) + 1
    graph.attrs.update(backend="gemmlowp")
    return counts
