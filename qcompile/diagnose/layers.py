"""SQNR of every quantized tensor against its float twin, worst first.

The float twin is the graph right after calibration (fused, not yet
quantized), run on the same inputs; nodes keep their names through
``convert`` and ``simulate``. Where a pass appended a node to a value (the
int8 ReLU6 clamp, a sub-8-bit clamp, a ``fake_quantize``), the last node of
that chain is what the quantized graph passes on, and that is compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcompile.backends.torch_ao.tensors import is_torch_quantized
from qcompile.diagnose.metrics import as_float, sqnr_db
from qcompile.interpreter import Interpreter
from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind


@dataclass
class LayerError:
    name: str
    op: str
    compared: str  # the node of the quantized graph that was compared
    sqnr_db: float


def _chain_end(graph: Graph, name: str) -> Node:
    node = graph.node(name)
    while True:
        users = [u for u, _ in graph.uses(node) if u.name.startswith(f"{name}_") and u.kind != NodeKind.OUTPUT]
        if len(users) != 1:
            return node
        node = users[0]


def _integer_value(graph: Graph, node: Node, value) -> bool:
    if not isinstance(value, torch.Tensor):
        return False
    return is_torch_quantized(value) or (value.dtype == torch.uint8 and node.quant.qparams is not None) or \
        node.target == "qcompile.quant.fake.fake_quantize"


def layer_errors(float_graph: Graph, quantized: Graph, inputs: tuple) -> list[LayerError]:
    """One row per quantized value that has a float twin of the same name, worst SQNR first."""
    reference: dict[str, torch.Tensor] = {}

    def keep_float(node, value):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            reference[node.name] = value

    Interpreter(float_graph).run(*inputs, hook=keep_float)
    present = {n.name for n in quantized.nodes()}
    wanted = {}
    for name in reference:
        if name in present and quantized.node(name).kind not in (NodeKind.INPUT, NodeKind.OUTPUT, NodeKind.PARAM):
            wanted[_chain_end(quantized, name).name] = name
    values: dict[str, torch.Tensor] = {}

    def keep_quantized(node, value):
        if node.name in wanted and _integer_value(quantized, node, value):
            values[node.name] = as_float(value, node)

    Interpreter(quantized).run(*inputs, hook=keep_quantized)
    rows = []
    for compared, name in wanted.items():
        if compared in values and values[compared].shape == reference[name].shape:
            rows.append(LayerError(name, float_graph.node(name).op, compared,
                                   sqnr_db(values[compared], reference[name])))
    return sorted(rows, key=lambda r: r.sqnr_db)
