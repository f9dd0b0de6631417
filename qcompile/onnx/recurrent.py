"""ONNX for float ``nn.LSTM`` and ``nn.GRU``: one ONNX LSTM / GRU op per layer.

torch and ONNX order the gates differently (LSTM: torch i, f, g, o; ONNX i, o,
f, c. GRU: torch r, z, n; ONNX z, r, h), so the weight rows are reordered;
torch's GRU applies the reset gate after the hidden projection, which is
ONNX's ``linear_before_reset=1``. The ops run sequence-first; a batch-first
module's input and output are transposed around them. The result has torch's
structure: ``(output, h_n)`` for a GRU, ``(output, (h_n, c_n))`` for an LSTM,
each state ``[layers x directions, batch, hidden]``.

Dynamically quantized modules have no standard ONNX op for their int8
kernels; their layers come from :mod:`qcompile.onnx.dynamic_recurrent`, or
for an LSTM exported with ``dynamic="fused"`` are onnxruntime's
``DynamicQuantizeLSTM`` (:mod:`qcompile.onnx.fused_dynamic`).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch

from qcompile.errors import QCompileError
from qcompile.ir.node import Node
from qcompile.onnx.dynamic_recurrent import dynamic_layers
from qcompile.onnx.fused_dynamic import MS_DOMAIN, fused_lstm_inputs

if TYPE_CHECKING:
    from qcompile.onnx.builder import Builder

# torch's gate blocks, in the order ONNX expects them
_GATES = {"lstm": (4, [0, 3, 1, 2]), "gru": (3, [1, 0, 2])}


def recurrent(b: Builder, node: Node, x: str) -> list:
    """The ONNX values of an ``nn.LSTM`` / ``nn.GRU`` node, in torch's output structure."""
    a = node.attrs
    if len(node.args) > 1 or node.kwargs:
        raise QCompileError(f"%{node.name}: an {node.op} given initial states is not exported to ONNX yet",
                            hint="start from zero states (call the module with the input only)")
    if a.get("proj_size", 0):
        raise QCompileError(f"%{node.name}: an LSTM with proj_size is not exported to ONNX yet")
    layers = a.get("num_layers", 1)
    fused = node.quant.mode == "dynamic" and node.op == "lstm" and b.dynamic == "fused"
    if node.quant.mode == "dynamic" and not fused:
        emit_layer = dynamic_layers(b, node)
    else:
        emit_layer = partial(_onnx_layer, b, node, fused)
    sequence = b.emit("Transpose", [x], perm=[1, 0, 2]) if a.get("batch_first", False) else x
    states: list[list[str]] = []
    for layer in range(layers):
        sequence, layer_states = emit_layer(layer, sequence)
        states.append(layer_states)
    out = b.emit("Transpose", [sequence], perm=[1, 0, 2]) if a.get("batch_first", False) else sequence
    stacked = [b.emit("Concat", [s[i] for s in states], axis=0) if layers > 1 else states[0][i]
               for i in range(len(states[0]))]
    return [out, stacked] if node.op == "lstm" else [out, stacked[0]]


def _onnx_layer(b: Builder, node: Node, fused: bool, layer: int, sequence: str) -> tuple[str, list[str]]:
    """One layer as ONNX's LSTM / GRU op, or onnxruntime's ``DynamicQuantizeLSTM`` if ``fused``: (output
    sequence, [Y_h (, Y_c)])."""
    directions = 2 if node.attrs.get("bidirectional", False) else 1
    outputs = [b.fresh(f"{node.name}_l{layer}_{part}") for part in ("y", "h", "c")[: 3 if node.op == "lstm" else 2]]
    attrs = {"hidden_size": node.attrs["hidden_size"], "direction": "bidirectional" if directions == 2 else "forward"}
    if node.op == "gru":
        attrs["linear_before_reset"] = 1
    w, r, bias = _layer_weights(b, node, layer, directions)
    if fused:
        b.emit("DynamicQuantizeLSTM", fused_lstm_inputs(b, f"{node.name}_l{layer}", w, r, bias, sequence), outputs,
               domain=MS_DOMAIN, **attrs)
    else:
        inputs = [sequence, b.const(f"{node.name}_W", w), b.const(f"{node.name}_R", r)]
        if bias is not None:
            inputs.append(b.const(f"{node.name}_B", bias))
        b.emit("LSTM" if node.op == "lstm" else "GRU", inputs, outputs, **attrs)
    # Y: [seq, directions, batch, hidden] -> [seq, batch, directions x hidden]
    y = b.emit("Transpose", [outputs[0]], perm=[0, 2, 1, 3])
    return b.emit("Reshape", [y, b.const("shape", np.array([0, 0, -1], np.int64))]), outputs[1:]


def _layer_weights(b: Builder, node: Node, layer: int,
                   directions: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """W, R and B (None without biases) of one layer, each stacked over directions, gates in ONNX's order."""
    blocks, order = _GATES[node.op]
    suffixes = [f"_l{layer}", f"_l{layer}_reverse"][:directions]

    def gates(tensor: torch.Tensor) -> torch.Tensor:
        return torch.cat([tensor.chunk(blocks)[i] for i in order])

    def stacked(kind: str) -> torch.Tensor:
        return torch.stack([gates(b.graph.param(node, f"{kind}{s}").detach().float()) for s in suffixes])

    bias = torch.cat([stacked("bias_ih"), stacked("bias_hh")], dim=1) if node.attrs.get("bias", True) else None
    return stacked("weight_ih"), stacked("weight_hh"), bias
