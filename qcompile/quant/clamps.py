"""Clamps that keep a quantized value on its grid, for every backend.

Two cases need an explicit clamp after a node, because the integer
container holds more codes than the value may take:

* a conv / linear with a fused ReLU6 whose grid reaches past 6 (torch has no
  int8 conv with ReLU6; qcompile's kernels fold the clamp into the output
  stage, :func:`qcompile.integer.stage.fold_clamps`);
* a value of fewer than 8 bits, whose uint8 container would hold up to 255
  steps.

The clamp is a ``hardtanh(lo, hi)`` node on the producer's grid (it
``shares`` it), read by all the producer's former readers::

    %conv = conv2d(%x, ...) : f32[...] {act='relu6'}
    %y    = add(%conv, ...)

    %conv       = conv2d(%x, ...) : f32[...] {act='relu6'}
    %conv_relu6 = relu6(%conv, 0.0, 6.0) : f32[...] {target='torch.nn.functional.hardtanh'}  # shares=%conv
    %y          = add(%conv_relu6, ...)
"""

from __future__ import annotations

from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind, Ref
from qcompile.quant.relu6_grid import relu6_top_code


def split_relu6(graph: Graph, node: Node) -> None:
    """A conv / linear with a fused ReLU6: quantize on the post-ReLU6 grid, then clamp at [0, 6].

    The grid from the range observed after ReLU6 is tight, but uint8 holds
    values up to 255 steps, beyond 6 (with a reduced range, up to twice the
    observed maximum), so an explicit int8 hardtanh(0, 6) keeps the ReLU6.
    Where the grid cannot pass 6 (zero point 0, 6 at code 255 or above, as
    convert's ``relu6-grid=full`` makes it where it can) that clamp would
    change no code, and is left out.
    """
    q = node.quant.qparams
    if node.act != "relu6":
        return
    if q is not None and not q.per_channel and int(q.zero_point) == 0 and relu6_top_code(q) == 255:
        return
    clamp_after(graph, node, 0.0, 6.0, "relu6")


def clamp_after(graph: Graph, node: Node, lo: float, hi: float, op: str) -> Node:
    """An int8 hardtanh(lo, hi) after ``node``, on its grid, read by all its former readers."""
    uses = graph.uses(node)
    clamp = graph.add_node(op, NodeKind.FUNCTION, [node], name=f"{node.name}_{op}",
                           target="torch.nn.functional.hardtanh", args=(Ref(0), lo, hi),
                           type=node.type, source=node.source, after=node)
    clamp.quant.mode, clamp.quant.shares, clamp.quant.qparams = "static", node.name, node.quant.qparams
    for user, port in uses:
        graph.set_input(user, port, clamp)
    return clamp


def clamp_to_bits(graph: Graph, node: Node) -> None:
    """Keep a sub-8-bit value on its grid: the container would hold up to 255 steps."""
    q = node.quant.qparams
    scale, zero = float(q.scale), int(q.zero_point)
    clamp_after(graph, node, (q.quant_min - zero) * scale, (q.quant_max - zero) * scale, f"clamp{node.quant.bits}b")
