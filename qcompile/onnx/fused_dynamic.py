"""ONNX for dynamically quantized ops as onnxruntime's fused kernels (``--onnx-dynamic fused``).

The default export reproduces torch's int8 arithmetic op by op
(:mod:`qcompile.onnx.dynamic`, :mod:`qcompile.onnx.dynamic_recurrent`): an
LSTM becomes a ``Scan`` of some twenty small ops a step, and onnxruntime
spends about a microsecond on each op call, which dominates a step at small
batches. onnxruntime's ``com.microsoft`` ops do the same work in one kernel:
``DynamicQuantizeLSTM`` a whole LSTM layer, ``DynamicQuantizeMatMul`` a
linear. They round their own way, quantizing inputs and hidden states on
8-bit grids measured at run time, so this form trades agreement with the
emitted PyTorch model for speed, and runs in onnxruntime only. GRUs have no
such kernel and stay exact.

The weights are on a symmetric 7-bit grid ``[-64, 63]``: onnxruntime's AVX2
kernels multiply uint8 inputs with int8 weights in pairs summed in 16 bits,
which 8-bit weights can saturate (``255 * 127 * 2 > 32767``) and 7-bit ones
cannot. They have the emitted model's granularity: one scale per LSTM
weight matrix and direction, per linear weight, or per column where ``dynamic`` ran
with ``per_channel=true``. They are quantized from the float weights: an
LSTM's are still the graph's parameters; a linear's ``dynamic`` kept in
``node.quant.float_weight``. Rounding torch's 8-bit codes again instead
loses accuracy: the 7-bit grid falls on every other 8-bit code, so every odd
one is a tie. A graph without them (one built by hand)
gets that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from qcompile.quant.integer_weights import bits_per_channel

if TYPE_CHECKING:
    from qcompile.ir.node import Node
    from qcompile.onnx.builder import Builder

MS_DOMAIN = "com.microsoft"
DYNAMIC_FORMS = ("exact", "fused")
WEIGHT_BITS = 7
FUSED_OPS = ("DynamicQuantizeLSTM", "DynamicQuantizeMatMul")


def seven_bit(w: torch.Tensor, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` ``[..., rows, columns]`` as int8 codes on a symmetric 7-bit grid, transposed to ``[...,
    columns, rows]`` (the kernels' layout), and its scales: ``[..., rows]`` ``per_row``, else one per
    matrix (``[...]``)."""
    *lead, rows, columns = w.shape
    flat = w.detach().float().reshape(-1, columns if per_row else rows * columns)
    q = bits_per_channel(flat, flat.amin(1), flat.amax(1), torch.full((len(flat),), WEIGHT_BITS))
    codes = q.codes.reshape(*lead, rows, columns).transpose(-1, -2).contiguous()
    scales = q.scales.float()
    return codes, scales.reshape(*lead, rows) if per_row else scales.reshape(lead)


def fused_lstm_inputs(b: Builder, name: str, w: torch.Tensor, r: torch.Tensor, bias: torch.Tensor | None,
                      sequence: str) -> list[str]:
    """The inputs of one layer's ``DynamicQuantizeLSTM`` from its float ``W``, ``R`` ([directions, 4 x
    hidden, ...], ONNX's gate order) and ``B``: no sequence lengths, zero initial states, no peepholes."""
    w_codes, w_scales = seven_bit(w, per_row=False)
    r_codes, r_scales = seven_bit(r, per_row=False)
    zeros = torch.zeros_like(w_scales, dtype=torch.int8)
    bias_input = b.const(f"{name}_B", bias) if bias is not None else ""
    return [sequence, b.const(f"{name}_W_q", w_codes), b.const(f"{name}_R_q", r_codes), bias_input, "", "", "", "",
            b.const(f"{name}_W_scale", w_scales), b.const(f"{name}_W_zero_point", zeros),
            b.const(f"{name}_R_scale", r_scales), b.const(f"{name}_R_zero_point", zeros)]


def fused_linear(b: Builder, node: Node, x: str) -> str:
    """A dynamically quantized linear as ``DynamicQuantizeMatMul``, its weights quantized from the float
    ones where ``dynamic`` kept them, else from torch's int8 ones."""
    weight = b.graph.param(node, "weight")
    per_column = weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
    source = node.quant.float_weight if node.quant.float_weight is not None else weight.dequantize()
    codes, scales = seven_bit(source, per_row=per_column)
    inputs = [x, b.const(f"{node.name}_weight_q", codes), b.const(f"{node.name}_weight_scale", scales),
              b.const(f"{node.name}_weight_zp", torch.zeros_like(scales, dtype=torch.int8))]
    bias = b.graph.param(node, "bias")
    if bias is not None:
        inputs.append(b.const(f"{node.name}_bias", bias.detach().float()))
    return b.emit("DynamicQuantizeMatMul", inputs, domain=MS_DOMAIN)


def uses_fused_kernels(model) -> bool:
    """Whether the ONNX ``model`` (a ``ModelProto``) holds onnxruntime's fused dynamic kernels (the ``fused``
    form)."""
    return any(n.op_type in FUSED_OPS for n in model.graph.node)
