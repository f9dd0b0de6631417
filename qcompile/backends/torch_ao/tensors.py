"""torch's quantized tensors, as the rest of qcompile reads and makes them.

A value of a graph on the ``native`` backend is a torch quantized tensor;
everywhere else values are plain tensors (uint8 codes on the integer stage
and the gemmlowp backend). The functions here take either kind, so that
tools comparing backends (diagnostics, agreement, the ONNX check) need not
name torch's quantized API themselves.
"""

from __future__ import annotations

import torch

from qcompile.ir.quant_types import QParams

# torch's quantized dtype for each of qcompile's integer containers
TORCH_DTYPES = {"uint8": torch.quint8, "int8": torch.qint8, "int32": torch.qint32}
# the names torch gives those containers, which configuration files written for torch.ao may use
TORCH_NAMES = {"quint8": "uint8", "qint8": "int8"}
# torch's quantized dtypes in printed IR types (``qu8[1,64,56,56]``: a value of the native backend)
IR_NAMES = {torch.qint8: "qi8", torch.quint8: "qu8", torch.qint32: "qi32", torch.quint4x2: "qu4x2"}


def is_torch_quantized(value) -> bool:
    """Whether ``value`` is one of torch's quantized tensors (a value of the native backend)."""
    return isinstance(value, torch.Tensor) and value.is_quantized


def quantize_tensor(x: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """``x`` as a torch quantized tensor with ``qparams``."""
    dtype = TORCH_DTYPES[qparams.dtype]
    if qparams.per_channel:
        return torch.quantize_per_channel(x, qparams.scale.double(), qparams.zero_point, qparams.axis, dtype)
    return torch.quantize_per_tensor(x, float(qparams.scale), int(qparams.zero_point), dtype)


def integer_codes(value: torch.Tensor) -> torch.Tensor:
    """The integer codes of a value: a torch quantized tensor's ``int_repr()``, or plain int8 / uint8 as it is."""
    return value.int_repr() if value.is_quantized else value


def dequantized(value: torch.Tensor) -> torch.Tensor:
    """A torch quantized tensor's float values; any other tensor as it is."""
    return value.dequantize() if value.is_quantized else value


def weight_grid(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A quantized weight's scales (float64), zero points and axis, one per output channel.

    A per-tensor weight's scale and zero point are repeated for every channel,
    so integer kernels and exporters handle both kinds alike.
    """
    if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        return weight.q_per_channel_scales().double(), weight.q_per_channel_zero_points(), weight.q_per_channel_axis()
    channels = weight.shape[0]
    return (torch.full((channels,), weight.q_scale(), dtype=torch.float64),
            torch.full((channels,), weight.q_zero_point(), dtype=torch.int64), 0)


def per_tensor_grid(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-tensor quantized weight's scale (float64) and zero point, as 0-d tensors."""
    return torch.tensor(weight.q_scale(), dtype=torch.float64), torch.tensor(weight.q_zero_point())


def with_codes(value: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``codes`` on ``value``'s grid: a torch quantized tensor like ``value``, or the codes themselves when
    ``value`` is plain (the integer stage's and gemmlowp's values are their codes)."""
    if not value.is_quantized:
        return codes
    if value.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return torch._make_per_tensor_quantized_tensor(codes, value.q_scale(), value.q_zero_point())
    return torch._make_per_channel_quantized_tensor(codes, value.q_per_channel_scales(),
                                                    value.q_per_channel_zero_points(), value.q_per_channel_axis())


def owned(value):
    """``value``, or a copy that owns its row scales: torch 2.14's quantized Embedding hands out a weight
    whose per-row scales and zero points live in its packed table and dangle once the module is freed."""
    if is_torch_quantized(value) and value.qscheme() == torch.per_channel_affine_float_qparams:
        return torch._make_per_channel_quantized_tensor(value.int_repr().clone(), value.q_per_channel_scales().clone(),
                                                        value.q_per_channel_zero_points().clone(),
                                                        value.q_per_channel_axis())
    return value
