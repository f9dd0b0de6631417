"""ONNX for dynamically quantized linears (the ``dynamic`` pass).

The input's range is measured at run time, on the whole tensor, as torch's
x86 kernel does: ``[min(x, 0), max(x, 0)]`` onto 7-bit codes (0..127)
(``reduce_range``), so the exported model rounds like the emitted PyTorch
module. ``MatMulInteger`` multiplies the codes with the int8 weights and the
int32 result is scaled back (input scale x weight scale per column) before
the float bias.

Why 7 bits: onnxruntime's int8 matrix kernel on AVX2 CPUs without VNNI adds
pairs of uint8 x int8 products in 16 bits. With 8-bit inputs (what its
``DynamicQuantizeLinear`` produces) and weights near +-127 the pair sums
saturate; onnxruntime's own ``quantize_dynamic`` model of a BERT-sized
encoder lost 26 dB to it on this project's benchmark machine
(``benchmarks/transformer_latency.py``). Inputs below 128 cannot saturate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from onnx import TensorProto

from qcompile.backends.torch_ao.tensors import integer_codes, weight_grid
from qcompile.ir.node import Node
from qcompile.onnx.fused_dynamic import fused_linear

if TYPE_CHECKING:
    from qcompile.onnx.builder import Builder

INPUT_CODES = 127  # torch's reduce_range on x86: 7-bit input codes


def dynamic_linear(b: Builder, node: Node, x: str) -> str:
    """The ONNX value of a dynamically quantized linear (with a fused ReLU if it has one); onnxruntime's
    fused kernel in the ``fused`` form (:mod:`qcompile.onnx.fused_dynamic`)."""
    if b.dynamic == "fused":
        out = fused_linear(b, node, x)
    else:
        out = integer_linear(b, node.name, quantize_input(b, node.name, x), b.graph.param(node, "weight"),
                             b.graph.param(node, "bias"))
    return b.emit("Relu", [out]) if "LinearReLU" in node.target else out


def integer_linear(b: Builder, name: str, x: tuple[str, str, str], weight: torch.Tensor,
                   bias: torch.Tensor | None) -> str:
    """``x @ weight.T + bias`` in float, from ``x``'s codes (:func:`quantize_input`) and a quantized
    ``weight`` [out, in]: ``MatMulInteger``, then the int32 result scaled by input scale x weight scale."""
    x_q, x_scale, x_zp = x
    scales, zero_points, _ = weight_grid(weight)
    codes = integer_codes(weight).to(torch.int8).t().contiguous()  # [in, out]
    w_zp = zero_points.to(torch.int8)
    per_column = bool((w_zp != w_zp[0]).any())
    acc = b.emit("MatMulInteger", [x_q, b.const(f"{name}_weight_q", codes), x_zp,
                                   b.const(f"{name}_weight_zp", w_zp if per_column else w_zp[0])])
    scale = b.emit("Mul", [x_scale, b.const(f"{name}_weight_scale", scales.float())])
    out = b.emit("Mul", [b.emit("Cast", [acc], to=TensorProto.FLOAT), scale])
    if bias is not None:
        out = b.emit("Add", [out, b.const(f"{name}_bias", bias.detach().float())])
    return out


def quantize_input(b: Builder, name: str, x: str) -> tuple[str, str, str]:
    """(codes, scale, zero point) of ``x`` on a 7-bit grid spanning its range and zero."""
    zero = b.const("zero", np.array(0, np.float32))
    lo = b.emit("Min", [b.emit("ReduceMin", [x], keepdims=0), zero])
    hi = b.emit("Max", [b.emit("ReduceMax", [x], keepdims=0), zero])
    scale = b.emit("Div", [b.emit("Sub", [hi, lo]), b.const("codes", np.array(INPUT_CODES, np.float32))])
    # an all-zero input has no range: any positive scale quantizes it exactly
    scale = b.emit("Max", [scale, b.const("tiny", np.array(np.finfo(np.float32).tiny, np.float32))])
    # round(-lo / scale) lies in [0, 127] (hi >= 0), so QuantizeLinear rounds it (half to even, as
    # torch does) with nothing to saturate: one op for Div, Round, Clip and Cast
    zp = b.emit("QuantizeLinear", [b.emit("Neg", [lo]), scale, b.const("zp0", np.array(0, np.uint8))])
    codes = b.emit("QuantizeLinear", [x, scale, zp], [b.fresh(f"{name}_x_q")])
    return codes, scale, zp
