"""ONNX for dynamically quantized ``nn.LSTM`` / ``nn.GRU``: the cell spelled out in a ``Scan``.

torch's int8 recurrent kernels (``quantize_dynamic``, x86 / fbgemm) are not
what ONNX's ``LSTM`` / ``GRU`` ops compute: every matrix product quantizes its
input at run time on a 7-bit grid measured on that very input, multiplies the
codes with int8 weights (per tensor, symmetric) and scales the int32 sums back
to float before the bias. The export does the same, per layer and direction:

- the input projection of the whole sequence at once, one grid for all time
  steps (as torch does on CPU), with :func:`qcompile.onnx.dynamic.integer_linear`;
- a ``Scan`` over the time steps (reversed for the backward direction) whose
  body quantizes the hidden state on its own grid, multiplies it with the
  recurrent weights in ``MatMulInteger``, and does the gate arithmetic in
  float: LSTM ``i, f, g, o``; GRU ``r, z, n`` with the reset gate applied after
  the recurrent projection, as torch does.

The int8 weights are the ones torch's module packs (``from_float`` with the
default dynamic qconfig), so the codes agree with the emitted PyTorch model's;
only the float arithmetic around them differs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from onnx import TensorProto, helper

from qcompile.ir.modules import build_module
from qcompile.ir.node import Node
from qcompile.onnx.dynamic import integer_linear, quantize_input
from qcompile.onnx.sequence_ops import int_list

if TYPE_CHECKING:
    from qcompile.onnx.builder import Builder

Layer = Callable[[int, str], tuple[str, list[str]]]


def dynamic_layers(b: Builder, node: Node) -> Layer:
    """A function ``(layer, sequence) -> (output sequence, [h_n (, c_n)])`` for ``node``'s layers, each
    state ``[directions, batch, hidden]``, with the int8 weights of torch's dynamic module."""
    state = {key: b.graph.param(node, key) for key in node.params}
    packed = build_module(node.target, node.attrs, state)._weight_bias()
    weights, biases = packed["weight"], packed["bias"]
    hidden = node.attrs["hidden_size"]
    suffixes = ["", "_reverse"][: 2 if node.attrs.get("bidirectional", False) else 1]

    def layer(index: int, sequence: str) -> tuple[str, list[str]]:
        x = quantize_input(b, f"{node.name}_l{index}", sequence)
        ys, finals = [], []
        for suffix in suffixes:
            key = f"l{index}{suffix}"
            ih = integer_linear(b, f"{node.name}_ih_{key}", x, weights[f"weight_ih_{key}"],
                                biases.get(f"bias_ih_{key}"))
            y, states = _scan(b, node, f"{node.name}_{key}", sequence, ih, hidden, weights[f"weight_hh_{key}"],
                              biases.get(f"bias_hh_{key}"), reverse=bool(suffix))
            ys.append(y)
            finals.append([b.emit("Unsqueeze", [s, int_list(b, 0)]) for s in states])
        out = b.emit("Concat", ys, axis=2) if len(ys) > 1 else ys[0]
        stacked = [b.emit("Concat", [f[i] for f in finals], axis=0) if len(finals) > 1 else finals[0][i]
                   for i in range(len(finals[0]))]
        return out, stacked

    return layer


def _scan(b: Builder, node: Node, name: str, sequence: str, ih: str, hidden: int, w_hh: torch.Tensor,
          b_hh: torch.Tensor | None, reverse: bool) -> tuple[str, list[str]]:
    """The ``Scan`` of one direction of one layer: (outputs [seq, batch, hidden], final states)."""
    batch = b.emit("Shape", [sequence], start=1, end=2)
    shape = b.emit("Concat", [batch, int_list(b, hidden)], axis=0)
    zeros = b.emit("ConstantOfShape", [shape], value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
    count = 2 if node.op == "lstm" else 1
    body = _body(b, node.op, name, hidden, w_hh, b_hh)
    finals = [b.fresh(f"{name}_{part}_n") for part in ("h", "c")[:count]]
    y = b.fresh(f"{name}_y")
    direction = [1 if reverse else 0]
    b.emit("Scan", [zeros] * count + [ih], finals + [y], body=body, num_scan_inputs=1,
           scan_input_directions=direction, scan_output_directions=direction)
    return y, finals


def _body(b: Builder, op: str, name: str, hidden: int, w_hh: torch.Tensor, b_hh: torch.Tensor | None):
    """One time step: (h, c, ih_t) -> (h', c', h') for an LSTM, (h, ih_t) -> (h', h') for a GRU."""
    outer, b.nodes = b.nodes, []
    first_constant = len(b.initializers)
    try:
        h = b.fresh(f"{name}_h")
        c = b.fresh(f"{name}_c") if op == "lstm" else None
        ih = b.fresh(f"{name}_ih_t")
        hh = integer_linear(b, f"{name}_hh", quantize_input(b, f"{name}_hh", h), w_hh, b_hh)
        if op == "lstm":
            gates = _split(b, b.emit("Add", [hh, ih]), 4)
            i, f, o = (b.emit("Sigmoid", [gates[k]]) for k in (0, 1, 3))
            g = b.emit("Tanh", [gates[2]])
            c_next = b.emit("Add", [b.emit("Mul", [f, c]), b.emit("Mul", [i, g])])
            h_next = b.emit("Mul", [o, b.emit("Tanh", [c_next])])
            states = [h_next, c_next]
        else:
            x_r, x_z, x_n = _split(b, ih, 3)
            h_r, h_z, h_n = _split(b, hh, 3)
            r = b.emit("Sigmoid", [b.emit("Add", [h_r, x_r])])
            z = b.emit("Sigmoid", [b.emit("Add", [h_z, x_z])])
            n = b.emit("Tanh", [b.emit("Add", [x_n, b.emit("Mul", [h_n, r])])])
            states = [b.emit("Add", [b.emit("Mul", [b.emit("Sub", [h, n]), z]), n])]
        y = b.emit("Identity", [states[0]])
        nodes = b.nodes
        # the step's weights and constants become the body's own initializers, not values of the graph
        # around it: onnxruntime ran a 2-layer LSTM 1.09-1.11x faster so (head to head, batch 1)
        constants = b.initializers[first_constant:]
        del b.initializers[first_constant:]
    finally:
        b.nodes = outer

    def value(v: str, width: int):
        return helper.make_tensor_value_info(v, TensorProto.FLOAT, ["batch", width])

    gate_width = (4 if op == "lstm" else 3) * hidden
    inputs = [value(h, hidden)] + ([value(c, hidden)] if c else []) + [value(ih, gate_width)]
    return helper.make_graph(nodes, f"{name}_step", inputs, [value(v, hidden) for v in states + [y]], constants)


def _split(b: Builder, x: str, parts: int) -> list[str]:
    outputs = [b.fresh(f"{x}_part") for _ in range(parts)]
    b.emit("Split", [x], outputs, axis=1, num_outputs=parts)
    return outputs
