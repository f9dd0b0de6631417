"""Where onnxruntime's int8 codes first part from qcompile's model: layer by layer, on the same inputs.

When ``--check`` finds the outputs too far apart, the question is whether
one layer is wrong (a bug in the exporter or a kernel) or whether the two
implementations' rounding, one step apart at rare elements, grew on its way
through the model. A QDQ export writes each quantized value of the graph as
a ``QuantizeLinear`` whose output is named after the graph node
(``<node>_q__<n>``), and a QOperator export names each node's codes the
same way, so both can be read at every quantized value: the file
runs in onnxruntime with those codes as extra outputs, the graph runs in
qcompile's interpreter, and the codes are compared in the file's order. The
first value whose codes differ says which it is: by one step, rounding; by
more, that layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qcompile.backends.torch_ao.tensors import integer_codes, is_torch_quantized
from qcompile.interpreter import Interpreter
from qcompile.onnx.runtime.session import in_memory_session

_CODES = re.compile(r"^(?P<node>.+)_q__\d+$")  # how the QDQ exporter names a node's QuantizeLinear output


@dataclass(frozen=True)
class LayerAgreement:
    """The codes of one quantized value, onnxruntime's against qcompile's graph."""

    node: str
    differ: float  # share of codes that differ
    beyond_one: float  # share of codes more than one step apart
    max_steps: int


def layer_agreement(path: str | Path, graph, inputs: tuple, optimize: bool = False) -> list[LayerAgreement]:
    """Every quantized value of ``graph`` that the file at ``path`` names after its node (QDQ: the
    ``QuantizeLinear`` outputs; QOperator: every node's codes), in the file's order, compared on ``inputs``
    (one tensor per model input)."""
    import onnx

    model = onnx.load(str(path))
    nodes = {n.name for n in graph.nodes()}
    probes = {}
    qoperator = any(n.op_type.startswith("QLinear") for n in model.graph.node)
    for node in model.graph.node:
        match = _CODES.match(node.output[0]) if node.op_type == "QuantizeLinear" or qoperator else None
        if match and match["node"] in nodes and node.output[0] not in probes:
            probes[node.output[0]] = match["node"]
            model.graph.output.append(onnx.ValueInfoProto(name=node.output[0]))
    if not probes:
        return []
    session = in_memory_session(model, optimize=optimize)
    feed = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
    names = [o.name for o in session.get_outputs()]
    theirs = dict(zip(names, session.run(None, feed), strict=True))

    ours: dict[str, torch.Tensor] = {}
    probed = set(probes.values())

    def keep(node, value):
        if node.name not in probed or not isinstance(value, torch.Tensor):
            return
        if is_torch_quantized(value):  # the native backend's values: torch's quantized tensors
            ours[node.name] = integer_codes(value).to(torch.int32)
        elif value.dtype == torch.uint8:  # the gemmlowp backend's: the codes themselves
            ours[node.name] = value.to(torch.int32)

    with torch.no_grad():
        Interpreter(graph).run(*inputs, hook=keep)
    rows = []
    for output, node in probes.items():
        mine = ours.get(node)
        if mine is None or tuple(mine.shape) != theirs[output].shape:
            continue  # a value the file computes in another layout (or not at all on the graph's side)
        steps = (torch.from_numpy(theirs[output].astype(np.int32)) - mine).abs()
        rows.append(LayerAgreement(node, float((steps > 0).float().mean()), float((steps > 1).float().mean()),
                                   int(steps.max())))
    return rows


@dataclass(frozen=True)
class Finding:
    """What the comparison found: a wrong layer, or rounding the model amplified; ``text`` says which."""

    text: str
    wrong_layer: bool


def explain(rows: list[LayerAgreement], min_share: float = 0.99) -> Finding | None:
    """What the layer-by-layer comparison says about an output disagreement, or None when it does not
    locate it: the file agrees with the graph (up to rounding that stays within ``min_share``), so the
    difference lies between the graph and the module it was checked against."""
    first = next((r for r in rows if r.differ > 0), None)
    if first is None:
        return None
    if first.max_steps > 1:
        return Finding(f"the first quantized value whose codes differ, %{first.node}, is up to {first.max_steps} "
                       f"steps off ({100 * first.differ:.2f}% of its codes): a bug in the exporter or a kernel at "
                       "that layer; please report it with the model", wrong_layer=True)
    last = rows[-1]
    if last.beyond_one <= 1 - min_share:
        return None
    return Finding(f"the codes agree exactly up to %{first.node}, where {100 * first.differ:.2f}% are one step apart "
                   f"(the two implementations round ties differently), and this model amplifies that to "
                   f"{100 * last.differ:.2f}% of %{last.node}'s codes ({100 * last.beyond_one:.2f}% more than one "
                   f"step off, max {last.max_steps}): rounding, not a wrong layer", wrong_layer=False)
