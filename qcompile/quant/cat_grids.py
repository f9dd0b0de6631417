"""A concatenation on its inputs' grid: the layers that make a cat's inputs write the cat's codes directly.

A cat with a grid of its own requantizes every value it copies: a second
rounding, onto a second grid for the same numbers. Where each input of a cat
comes from a layer with a grid of its own (a conv, an add, a quantize stub,
another cat), followed by nothing but ops that keep that grid and are their
input's only reader (a ReLU, timm's ``nn.Identity()``, a pool), the cat and
those layers get the cat's grid, and the cat copies codes. PyTorch's own
quantizers share one observer between a cat's inputs and its output for the
same reason. The grid is the cat's own: its calibration saw every value it
copies (a histogram observer's range over all of them, which may clip the
widest input's outliers where a union of the inputs' ranges would not). A
layer read by two cats joins them into one group, whose grid spans the
cats' ranges (DenseNet's features). A layer's other readers read the cat's
grid too.

Not shared, so the cat keeps requantizing: an input on a grid fixed in
advance (sigmoid) or sized for a fused ReLU6 (:mod:`qcompile.quant.relu6_grid`),
per-channel grids, other bit widths, observers or containers, a float input,
and a value reached through a shared op whose input has other readers (a
max pool of a block's output that other branches read too). Before and
after, GhostNet's ghost module (a 1x1 conv, a depthwise conv of its output,
their concatenation), in ``convert``'s output::

    %primary = conv2d(%add, ...)    # ... range=[0, 1.05469] uint8 scale=0.00830463 zp=0
    %cheap   = conv2d(%primary ...) # ... range=[0, 1.28174] uint8 scale=0.0100924 zp=0
    %cat_2   = cat([%primary, %cheap], 1, 0.0098233, 0)  # ... range=[0, 1.24756] uint8 scale=0.0098233 zp=0

    %primary = conv2d(%add, ...)    # ... range=[0, 1.05469] uint8 scale=0.0098233 zp=0
    %cheap   = conv2d(%primary ...) # ... range=[0, 1.28174] uint8 scale=0.0098233 zp=0
    %cat_2   = cat([%primary, %cheap], 1, 0.0098233, 0)  # ... range=[0, 1.24756] uint8 scale=0.0098233 zp=0
"""

from __future__ import annotations

from dataclasses import replace

import torch

from qcompile.ir.graph import Graph
from qcompile.ir.node import Node
from qcompile.quant.op_table import FIXED
from qcompile.quant.qparams import qparams_from_range


def _range(node: Node) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The per-tensor range a node's grid is chosen from: its analytic clip, else its statistics."""
    q = node.quant
    lo, hi = q.clip if q.clip is not None else (q.stats.lo, q.stats.hi) if q.stats is not None else (None, None)
    if lo is None or torch.as_tensor(lo).numel() != 1:
        return None
    return torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)


def _can_share(node: Node, cat: Node) -> bool:
    q = node.quant
    return (q.mode == "static" and q.observer is not None and q.observer == cat.quant.observer
            and q.bits == cat.quant.bits and q.qparams is not None and not q.qparams.per_channel
            and node.op not in FIXED and node.act not in ("relu6", "hardtanh") and _range(node) is not None)


def _maker(graph: Graph, node: Node) -> Node:
    """The layer with a grid of its own that ``node``'s value is on, followed back through ops that share
    their input's grid (a ReLU after a conv, timm's ``nn.Identity()``, a pool) as long as each is its input's
    only reader; else ``node`` itself, which then has no grid of its own."""
    start = node
    while node.quant.shares is not None:
        inputs = graph.inputs(node)
        if not inputs or len(graph.uses(inputs[0])) != 1:
            return start
        node = inputs[0]
    return node


def share_cat_grids(graph: Graph) -> int:
    """Give each eligible cat and the layers that make its inputs one grid (after qparams are chosen from
    ranges; before the values that share a grid copy it). Returns the number of cats that copy codes."""
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    shared = 0
    for cat in graph.nodes():
        if cat.op != "cat" or not _can_share(cat, cat):
            continue
        owners = [_maker(graph, i) for i in graph.inputs(cat)]
        if not owners or not all(o.quant.shares is None and _can_share(o, cat) for o in owners):
            continue
        for owner in owners:
            parent[root(owner.name)] = root(cat.name)
        shared += 1
    groups: dict[str, list[Node]] = {}
    for name in parent:
        groups.setdefault(root(name), []).append(graph.node(name))
    for members in groups.values():
        ranges = [_range(m) for m in members if m.op == "cat"]  # each cat's calibration saw all it copies
        lo = torch.stack([r[0] for r in ranges]).min()
        hi = torch.stack([r[1] for r in ranges]).max()
        spec = members[0].quant.observer
        spec = replace(spec, bits=members[0].quant.bits) if members[0].quant.bits is not None else spec
        grid = qparams_from_range(lo, hi, spec)
        for member in members:
            member.quant.qparams = grid
    return shared
