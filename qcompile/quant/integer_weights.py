"""A weight as integer codes and its grid: plain tensors, the same for every backend.

``convert`` decides each weight's grid (``weight_qparams`` from its
statistics, or per-channel bit widths from ``bitalloc`` /
``convert{weight-bits}``); :func:`integer_weight` turns the float weight into
what the integer kernels hold::

    codes[c, ...] = clamp(round(w[c, ...] * (1 / scale[c])) + zero_point[c], qmin, qmax)

in float32, rounding half to even: the same codes, element for element, as
torch's per-channel quantization gives (checked over 42 million weights of
five CNNs), without creating a torch quantized tensor. Each backend wraps
them as it needs: the ``gemmlowp`` kernels take them as they are; the
``torch-ao`` backend builds torch's quantized tensors from them
(:func:`qcompile.backends.torch_ao.as_torch_weight`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcompile.ir.node import QuantAnnotation

_EPS = float(torch.finfo(torch.float32).eps)


@dataclass(frozen=True)
class IntegerWeight:
    """Integer codes (``int8``, or ``uint8`` for an unsigned grid) and one grid per output channel.

    Attributes:
        codes: The weight's codes, the float weight's shape.
        scales: float64, one per output channel (a per-tensor grid repeats its scale).
        zero_points: int64, one per output channel.
        per_channel: Whether the grid was chosen per channel (``False``: one scale, repeated).
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zero_points: torch.Tensor
    per_channel: bool

    @property
    def symmetric(self) -> bool:
        return not bool(self.zero_points.any())


def integer_weight(weight: torch.Tensor, q: QuantAnnotation) -> IntegerWeight:
    """The codes and grid of ``weight`` under the node's weight annotation (see the module docstring)."""
    weight = weight.detach()
    if q.weight_bits is not None:
        lo, hi = _channel_range(q)
        return bits_per_channel(weight, lo, hi, q.weight_bits)
    qparams = q.weight_qparams
    channels = weight.shape[0]
    if qparams.per_channel:
        if qparams.axis != 0:
            raise ValueError(f"weights are quantized along their output channels (axis 0), not {qparams.axis}")
        shape = (-1,) + (1,) * (weight.dim() - 1)
        scale = qparams.scale.float().reshape(shape)
        zero = qparams.zero_point.reshape(shape)
    else:
        scale, zero = qparams.scale.float(), qparams.zero_point
    scales, zeros = weight_codes_grid(q, channels)
    codes = torch.clamp(torch.round(weight.float() * (1.0 / scale)) + zero, qparams.quant_min, qparams.quant_max)
    container = torch.uint8 if qparams.dtype == "uint8" else torch.int8
    return IntegerWeight(codes.to(container), scales, zeros, qparams.per_channel)


def weight_codes_grid(q: QuantAnnotation, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-output-channel grid (float64 scales, int64 zero points) :func:`integer_weight` gives a weight
    of ``channels`` output channels under ``q``: a function of the annotation alone, so that a reader of the
    integer codes (the ONNX writer) knows their grid without the float weight."""
    if q.weight_bits is not None:
        lo, hi = _channel_range(q)
        scales = _bits_scales(lo, hi, q.weight_bits.to(torch.float64))
        return scales, torch.zeros(len(scales), dtype=torch.int64)
    qparams = q.weight_qparams
    if qparams.per_channel:
        return qparams.scale.double(), qparams.zero_point.long()
    return (torch.full((channels,), float(qparams.scale), dtype=torch.float64),
            torch.full((channels,), int(qparams.zero_point), dtype=torch.int64))


def _channel_range(q: QuantAnnotation) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = q.weight_stats.lo, q.weight_stats.hi
    if lo.dim() == 0:
        lo, hi = lo.expand(len(q.weight_bits)), hi.expand(len(q.weight_bits))
    return lo, hi


def _bits_codes(bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The lowest and highest code of ``bits`` (float64) bits per channel; both 0 for 0 bits."""
    qmin = torch.where(bits > 0, -(2.0 ** (bits - 1)), torch.zeros_like(bits))
    qmax = torch.where(bits > 0, 2.0 ** (bits - 1) - 1, torch.zeros_like(bits))
    return qmin, qmax


def _bits_scales(lo: torch.Tensor, hi: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    qmin, qmax = _bits_codes(bits)
    magnitude = torch.maximum(-torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi)))
    return (magnitude.double() / ((qmax - qmin) / 2).clamp(min=0.5)).clamp(min=_EPS)


def bits_per_channel(weight: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: torch.Tensor) -> IntegerWeight:
    """Symmetric per-output-channel int8 codes with ``bits[c]`` bits in channel ``c``.

    Each channel uses codes in ``[-2^(b-1), 2^(b-1) - 1]`` of the int8 container
    (a 0-bit channel is all zeros), so int8 kernels run them as they are.
    """
    bits = bits.to(torch.float64)
    qmin, qmax = _bits_codes(bits)
    scale = _bits_scales(lo, hi, bits)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    codes = torch.round(weight.double() / scale.reshape(shape))
    codes = torch.maximum(torch.minimum(codes, qmax.reshape(shape)), qmin.reshape(shape)).to(torch.int8)
    return IntegerWeight(codes, scale, torch.zeros(len(scale), dtype=torch.int64), True)
