"""The ``.qir`` text format: one aligned line per node.

::

    graph ResNet  # facts: fused, lowered
      %x       = input() : f32[1,3,224,224]
      %conv1   = conv2d(%x, $conv1.weight, $conv1.bias) : f32[1,64,112,112] {act='relu', kernel_size=(7, 7), ...}
      %flatten = flatten(%avgpool, 1) : f32[1,512]
      %output  = output(%fc) : f32[1,1000]
    # params: 62 tensors, 11689512 values

Parameters appear by reference (``$name``), constructor arguments only where
they differ from the default, floats with six significant digits, quantization
annotations after ``#`` once a pass has set them. Nothing depends on object
ids or file paths, so the text is stable across runs and machines and serves
for golden tests.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from qcompile.ir.graph import Graph
from qcompile.ir.modules import non_default_ctor_args
from qcompile.ir.node import Node, NodeKind, Ref
from qcompile.ir.targets import resolve_target


def format_constant(value: Any, refs: list[str] | None = None) -> str:
    """Stable text for an argument value; ``Ref(i)`` prints as ``refs[i]``."""
    if isinstance(value, Ref):
        return refs[value.index] if refs is not None else f"%{value.index}"
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return f"float('{value}')"
        return format(value, ".6g")
    if isinstance(value, tuple):
        inner = ", ".join(format_constant(v, refs) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(format_constant(v, refs) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {format_constant(v, refs)}" for k, v in value.items()) + "}"
    if isinstance(value, slice):
        parts = [value.start, value.stop] + ([value.step] if value.step is not None else [])
        return ":".join("" if p is None else format_constant(p, refs) for p in parts)
    if isinstance(value, torch.Tensor):
        return f"tensor<{value.dtype}, {list(value.shape)}>"
    if value is Ellipsis:
        return "..."
    return repr(value)


def _default_target(node: Node) -> bool:
    """Whether ``node.target`` is what its op name implies (then it is not printed)."""
    if node.kind == NodeKind.MODULE:
        return node.target.startswith("torch.nn.") and node.target.count(".") == 2
    if node.kind == NodeKind.FUNCTION:
        return node.target in {
            f"torch.{node.op}",
            f"torch.nn.functional.{node.op}",
            f"operator.{node.op}",
            f"builtins.{node.op}",
        }
    if node.kind == NodeKind.METHOD:
        return node.target == node.op
    return True


def node_attrs(node: Node) -> dict[str, Any]:
    """The attributes shown for ``node``: non-default constructor args, op attrs, target."""
    shown: dict[str, Any] = {}
    if node.kind == NodeKind.MODULE:
        shown.update(non_default_ctor_args(resolve_target(node.target), node.attrs))
    else:
        shown.update(node.attrs)
    if node.act:
        shown["act"] = node.act
    if node.kind == NodeKind.METHOD and node.target == node.op:
        shown["method"] = True
    elif not _default_target(node):
        shown["target"] = node.target
    return shown


def _param_refs(node: Node) -> list[str]:
    """``$bn1.{weight,bias}`` when all params sit under one prefix, else one ``$`` each."""
    names = list(node.params.values())
    prefixes = {name.rpartition(".")[0] for name in names}
    if len(names) > 1 and len(prefixes) == 1 and "" not in prefixes:
        prefix = prefixes.pop()
        return [f"${prefix}.{{{','.join(n.rpartition('.')[2] for n in names)}}}"]
    return [f"${name}" for name in names]


def format_node(graph: Graph, node: Node, name_width: int = 0) -> str:
    """One ``.qir`` line for ``node`` (without indentation)."""
    refs = [f"%{p.name}" for p in graph.inputs(node)]
    parts = [format_constant(a, refs) for a in node.args]
    parts += [f"{k}={format_constant(v, refs)}" for k, v in node.kwargs.items()]
    if node.kind == NodeKind.MODULE:
        parts += _param_refs(node)
    elif node.kind == NodeKind.PARAM:
        parts = [f"${node.target}"]
    line = f"%{node.name:<{name_width}} = {node.op}({', '.join(parts)}) : {node.type}"
    attrs = node_attrs(node)
    if attrs:
        line += " {" + ", ".join(f"{k}={format_constant(attrs[k])}" for k in sorted(attrs)) + "}"
    if not node.quant.is_empty():
        line += "  # " + node.quant.describe()
    return line


def print_graph(graph: Graph) -> str:
    """The whole graph in ``.qir`` form, ending with a newline."""
    nodes = graph.nodes()
    width = max((len(n.name) for n in nodes), default=0)
    header = f"graph {graph.name}"
    if graph.facts:
        header += "  # facts: " + ", ".join(sorted(graph.facts))
    if graph.attrs:
        header += "  {" + ", ".join(f"{k}={format_constant(graph.attrs[k])}" for k in sorted(graph.attrs)) + "}"
    lines = [header]
    lines += ["  " + format_node(graph, n, width) for n in nodes]
    values = sum(t.numel() for t in graph.params.values())
    lines.append(f"# params: {len(graph.params)} tensors, {values} values")
    return "\n".join(lines) + "\n"


def excerpt(graph: Graph, node: Node, radius: int = 3) -> str:
    """The printed lines around ``node``, with ``node`` marked ``>>``.

    Used by errors about a node, so the user sees it in context.
    """
    nodes = graph.nodes()
    index = next((i for i, n in enumerate(nodes) if n is node), None)
    if index is None:
        return f"  (%{node.name} is not in the graph)"
    lo, hi = max(0, index - radius), min(len(nodes), index + radius + 1)
    width = max(len(n.name) for n in nodes[lo:hi])
    lines = []
    for i in range(lo, hi):
        mark = ">> " if i == index else "   "
        lines.append(mark + format_node(graph, nodes[i], width))
    text = "\n".join(lines)
    where = node.source.describe()
    if where:
        text += f"\n   (from {where})"
    return text
