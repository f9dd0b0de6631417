"""int8 embedding tables: one uint8 code per value, a float scale and offset per row.

This is torch.ao's ``float_qparams_weight_only_qconfig`` (per-row min/max,
``per_channel_affine_float_qparams``): row ``r`` spans ``[min, max]`` of its
own values in 255 steps, so each value comes back within half a step of its
row's range, and a table takes a quarter of its float size. The lookup's
output stays float.

torch.export writes an embedding as ``aten.embedding(weight, ids)`` on a
graph parameter, torch.fx keeps ``nn.Embedding`` as a module;
:func:`embedding_as_module` turns the first into the second, so that one
quantized module (``torch.ao.nn.quantized.Embedding``) serves both.
"""

from __future__ import annotations

import torch
from torch.ao.quantization.observer import PerChannelMinMaxObserver

from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind, Ref


def quantize_rows(table: torch.Tensor) -> torch.Tensor:
    """``table`` [rows, width] as a quint8 tensor with a float scale and zero point per row."""
    observer = PerChannelMinMaxObserver(dtype=torch.quint8, qscheme=torch.per_channel_affine_float_qparams, ch_axis=0)
    observer(table.detach().float())
    scale, zero_point = observer.calculate_qparams()
    return torch.quantize_per_channel(table.detach().float(), scale, zero_point, 0, torch.quint8)


def embedding_as_module(graph: Graph, node: Node) -> bool:
    """Turn a functional embedding over a graph parameter into an ``nn.Embedding`` module node, in place.

    Returns False (and changes nothing) where the table is not a parameter of
    the graph (computed, or read by other nodes too).
    """
    inputs = graph.inputs(node)
    aten = node.target.startswith("torch.ops.aten.")
    args = list(node.args) + [None] * 4
    table_ref, ids_ref = (args[0], args[1]) if aten else (args[1] if args[1] is not None else node.kwargs.get("weight"),
                                                          args[0] if args[0] is not None else node.kwargs.get("input"))
    if not (isinstance(table_ref, Ref) and isinstance(ids_ref, Ref)):
        return False
    table, ids = inputs[table_ref.index], inputs[ids_ref.index]
    if table.kind != NodeKind.PARAM or len(graph.users(table)) != 1:
        return False
    padding = args[2] if aten else (args[2] if args[2] is not None else node.kwargs.get("padding_idx"))
    max_norm = None if aten else (args[3] if args[3] is not None else node.kwargs.get("max_norm"))
    rows, width = graph.params[table.target].shape
    node.kind, node.target = NodeKind.MODULE, "torch.nn.Embedding"
    node.attrs = {"num_embeddings": rows, "embedding_dim": width,
                  "padding_idx": None if padding is None or padding < 0 else padding, "max_norm": max_norm}
    node.params = {"weight": table.target}
    graph.set_inputs(node, [ids], args=(Ref(0),), kwargs={})
    graph.erase(table)
    return True
