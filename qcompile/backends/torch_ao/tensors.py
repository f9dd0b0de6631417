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
