"""A fused ReLU6's grid: [0, 6] over the whole uint8 container, and 7-bit weights where it is read.

A conv or linear with a fused ReLU6 is quantized on the grid observed after
the ReLU6. On a reduced-range grid (``default`` / ``x86`` / ``fbgemm``
presets: 128 steps) the uint8 container still holds codes up to 255, past 6
wherever the observed maximum is above about 3, so the ReLU6 needs a clamp
on the codes after the layer (an int8 hardtanh in torch, a ``Clip`` in
ONNX): one more pass over the tensor, which no runtime fuses. The grid
``[0, 6]`` over the whole container (scale 6/255, zero point 0) needs none:
the layer's own saturation at 255 is the ReLU6. Its steps are as fine or
finer than those of the observed grid it replaces (a 128-step grid past 3
has steps of 3/127 or more; 6/255 is less).

Reduced ranges exist for the layers that read the codes: x86 CPUs without
VNNI multiply uint8 by int8 with ``vpmaddubsw``, which adds neighbouring
products in saturating int16: safe for codes up to 127 with 8-bit weights
(2 * 127 * 127 < 32768), not for codes up to 255. onnxruntime's dense int8
kernels add pairs this way, and so do torch's x86 depthwise kernels (pairs
of taps). So each conv or linear that reads a widened grid (directly or
through ops that share it: a max pool, a global average pool) gets 7-bit
weights, [-64, 63]: 2 * 255 * 64 = 32640 fits. Pooling, adds and the other
ops that read codes multiply nothing by weights. Per-channel weights
(``x86``, ``fbgemm``) spare that bit (MobileNetV2: the same output SQNR);
per-tensor ones (``default``) do not, so a grid read by a layer with per-tensor weights keeps its
clamp. So do grids ``aciq`` clipped or gave fewer than 8 bits, and every
grid after QAT, which learned its grids and 8-bit weights.

``docs/design-notes.md`` has the measurements behind this choice.
"""

from __future__ import annotations

import numpy as np
import torch

from qcompile.ir.graph import Graph
from qcompile.ir.node import Node
from qcompile.ir.quant_types import QParams

FULL_RELU6 = QParams(torch.tensor(6.0 / 255.0), torch.tensor(0), "uint8", 0, 255)
WIDE_INPUT_WEIGHT_BITS = 7


def relu6_top_code(q: QParams) -> int:
    """The code of 6 on a uint8 grid, saturated at 255: the grid holds nothing above 6 when it is 255."""
    return int(np.clip(np.rint(np.float32(6) / np.float32(q.scale)) + int(q.zero_point), 0, 255))


def _sharers(graph: Graph, node: Node) -> list[Node]:
    """``node`` and the nodes that reuse its grid, transitively."""
    group, names = [node], {node.name}
    for other in graph.nodes():
        if other.quant.shares in names:
            group.append(other)
            names.add(other.name)
    return group


def _weighted_readers(graph: Graph, group: list[Node]) -> list[Node]:
    """The convs and linears that multiply the group's codes by weights."""
    return [user for member in group for user, _ in graph.uses(member)
            if user.op == "linear" or user.op.startswith("conv")]


def _per_channel_weights(node: Node) -> bool:
    """Weights with a range per output channel: one bit fewer costs them little."""
    q = node.quant
    return q.weight_bits is not None or (q.weight_observer is not None and q.weight_observer.per_channel)


def widen_relu6_grids(graph: Graph) -> tuple[list[str], list[str]]:
    """Give each fused ReLU6 whose grid reaches past 6 the grid [0, 6] over 255 codes; 7-bit weights to its readers.

    Only where every reader has per-channel weights, and not where ``aciq`` chose the range or the grid
    has fewer than 8 bits; the values that share its grid follow. Returns the widened nodes' names and
    the readers' names.
    """
    widened, narrowed = [], []
    for node in graph.nodes():
        q = node.quant.qparams
        if (node.act != "relu6" or q is None or q.per_channel or q.dtype != "uint8"
                or relu6_top_code(q) == 255 or node.quant.clip is not None
                or (node.quant.bits is not None and node.quant.bits < 8)):
            continue  # an analytic clip (aciq) or a sub-8-bit grid is the user's choice
        group = _sharers(graph, node)
        readers = _weighted_readers(graph, group)
        if not all(_per_channel_weights(reader) for reader in readers):
            continue
        for member in group:
            member.quant.qparams = FULL_RELU6
        for reader in readers:
            channels = graph.param(reader, "weight").shape[0]
            bits = reader.quant.weight_bits
            reader.quant.weight_bits = (torch.full((channels,), WIDE_INPUT_WEIGHT_BITS) if bits is None
                                        else bits.clamp(max=WIDE_INPUT_WEIGHT_BITS))
            narrowed.append(reader.name)
        widened.append(node.name)
    return widened, narrowed
