"""How closely the ``gemmlowp`` backend follows the ``native`` one, layer by layer and end to end.

Both backends hold the same integer weights and grids (``convert`` chooses
them once); they differ in arithmetic: torch's kernels requantize with a
float multiplier and a float bias, gemmlowp with a 31-bit fixed-point
multiplier and an int32 bias. :func:`layer_agreement` feeds every gemmlowp
layer the *native* layer's inputs, so each difference is that layer's own;
:func:`output_agreement` compares the final integer codes, where the
differences of all layers have compounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcompile.backends.gemmlowp import KERNELS, REFERENCE
from qcompile.backends.torch_ao.tensors import integer_codes
from qcompile.diagnose.amplification import final_integer_node
from qcompile.interpreter import Interpreter
from qcompile.ir.graph import Graph
from qcompile.ir.node import NodeKind


@dataclass
class Agreement:
    name: str
    elements: int
    exact: float
    within_one: float
    max_lsb: int


def _agreement(name: str, a: torch.Tensor, b: torch.Tensor) -> Agreement:
    diff = (a.to(torch.int32) - b.to(torch.int32)).abs()
    return Agreement(name, diff.numel(), float((diff == 0).float().mean()), float((diff <= 1).float().mean()),
                     int(diff.max()) if diff.numel() else 0)


def _values(graph: Graph, inputs: tuple) -> dict[str, torch.Tensor]:
    values: dict[str, torch.Tensor] = {}

    def keep(node, value):
        if isinstance(value, torch.Tensor):
            values[node.name] = value

    Interpreter(graph).run(*inputs, hook=keep)
    return values


def _native_name(node) -> str:
    """The native node holding this gemmlowp node's value: a folded clamp's, for a conv that absorbed one."""
    return node.quant.absorbs or node.name


def layer_agreement(native: Graph, gemmlowp: Graph, inputs: tuple) -> list[Agreement]:
    """For each gemmlowp kernel module: its output on native's inputs against native's output."""
    reference = _values(native, inputs)
    interpreter = Interpreter(gemmlowp)
    rows = []
    for node in gemmlowp.nodes():
        target = node.target if isinstance(node.target, str) else ""
        if node.kind != NodeKind.MODULE or not target.startswith((f"{KERNELS}Q", f"{REFERENCE}Q")):
            continue
        args = [integer_codes(reference[_native_name(i)]) for i in gemmlowp.inputs(node)]
        with torch.no_grad():
            out = interpreter.module(node)(*args)
        rows.append(_agreement(node.name, out, integer_codes(reference[_native_name(node)])))
    return rows


def output_agreement(native: Graph, gemmlowp: Graph, inputs: tuple) -> Agreement:
    """The integer codes that reach the final dequantize, end to end."""
    a, b = _values(native, inputs), _values(gemmlowp, inputs)
    producer = final_integer_node(gemmlowp)
    return _agreement(producer.name, integer_codes(a[_native_name(producer)]), integer_codes(b[producer.name]))
