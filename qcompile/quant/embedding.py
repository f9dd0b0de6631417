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


def rows_as_read(table: torch.Tensor, settings: dict) -> torch.Tensor:
    """An embedding module's float ``table`` as its lookups read it, given its ``settings`` (attrs).

    With ``max_norm``, torch rescales each row it reads whose
    ``norm_type``-norm passes ``max_norm`` (in place,
    ``torch.embedding_renorm_``); a rescaled row is not rescaled again, so the
    table with every row renormalized once, read without ``max_norm``, gives
    the same lookups.
    """
    rows = table.detach().float()
    if settings.get("max_norm") is None:
        return rows
    rows = rows.clone()
    with torch.no_grad():
        torch.embedding_renorm_(rows, torch.arange(len(rows)), settings["max_norm"], settings.get("norm_type", 2.0))
    return rows


_KWARGS = {"weight": "table", "indices": "ids", "input": "ids"}


def embedding_call(node: Node) -> dict:
    """A functional embedding's ``table``, ``ids``, ``padding_idx`` and ``max_norm``, as its args hold
    them (``Ref`` for a node): ``aten.embedding(weight, indices, padding_idx=-1, ...)`` or
    ``F.embedding(input, weight, padding_idx=None, max_norm=None, ...)``."""
    aten = node.target.startswith("torch.ops.aten.")
    positions = ("table", "ids", "padding_idx") if aten else ("ids", "table", "padding_idx", "max_norm")
    call = {"padding_idx": None, "max_norm": None} | dict(zip(positions, node.args, strict=False))
    call |= {_KWARGS.get(k, k): v for k, v in node.kwargs.items()}
    if isinstance(call["padding_idx"], int) and call["padding_idx"] < 0:
        call["padding_idx"] = None  # aten's "no padding row"
    return call


def embedding_as_module(graph: Graph, node: Node) -> bool:
    """Turn a functional embedding over a graph parameter into an ``nn.Embedding`` module node, in place.

    Returns False (and changes nothing) where the table is not a parameter of
    the graph (computed, or read by other nodes too).
    """
    call = embedding_call(node)
    if not (isinstance(call.get("table"), Ref) and isinstance(call.get("ids"), Ref)):
        return False
    inputs = graph.inputs(node)
    table, ids = inputs[call["table"].index], inputs[call["ids"].index]
    if table.kind != NodeKind.PARAM or len(graph.users(table)) != 1:
        return False
    rows, width = graph.params[table.target].shape
    node.kind, node.target = NodeKind.MODULE, "torch.nn.Embedding"
    node.attrs = {"num_embeddings": rows, "embedding_dim": width, "padding_idx": call["padding_idx"],
                  "max_norm": call["max_norm"]}
    node.params = {"weight": table.target}
    graph.set_inputs(node, [ids], args=(Ref(0),), kwargs={})
    graph.erase(table)
    return True
