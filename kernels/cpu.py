"""The CPU twin of the CUDA kernels: the same integer results, at usable speed.

The accumulation ``sum_k (q_a - z_a) * q_w`` runs as float convolutions or
matmuls, which is exact: every product and partial sum is an integer, and in
float32 they stay below 2^24 when ``depth * 255 * 128 < 2^24`` (any order of
summation then gives the exact sum). Deeper reductions are split into chunks
of input channels that each fit, summed in int32; grouped convolutions that
do not fit run in float64 (exact below 2^53). The output stage is
:mod:`fixed_point`, bit for bit the CUDA epilogue. Padding is by the input
zero point, as the GPU's im2col pads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from qcompile.kernels import fixed_point as fp
from qcompile.kernels import host, host_conv
from qcompile.kernels.host_conv import FLOAT32_EXACT as _FLOAT32_EXACT


def accumulator_bound(depth: int) -> int:
    """A bound on ``|sum_k (q_a - z_a) * q_w|`` over ``depth`` terms (uint8 activations, int8 weights)."""
    return depth * 255 * 128


def accumulation_dtype(depth: int) -> torch.dtype:
    """float32 when the reduction is exact in it, else float64."""
    return torch.float32 if accumulator_bound(depth) < _FLOAT32_EXACT else torch.float64


def _chunked(compute, channels: int, per_channel_depth: int):
    """``compute(c0, c1)`` over input-channel chunks small enough for exact float32, summed in int32.

    A reduction that fits in one chunk comes back as its float32 result:
    exact integers, which the output stage reads as they are."""
    step = max(1, (_FLOAT32_EXACT - 1) // accumulator_bound(per_channel_depth))
    if step >= channels:  # one chunk: its exact float32 sums go to the output stage as they are
        return compute(0, channels)
    total = None
    for c0 in range(0, channels, step):
        part = compute(c0, min(c0 + step, channels)).to(torch.int32)
        total = part if total is None else total.add_(part)
    return total


def _epilogue(acc: torch.Tensor, bias, multiplier, exponent, out_zero: int, lo: int, hi: int,
              axis: int, depth: int) -> torch.Tensor:
    bound = accumulator_bound(depth)
    if host.library() is not None:  # one pass, compiled from gemmlowp.h
        return host.output_stage(acc, bias, multiplier, exponent, out_zero, lo, hi, axis % acc.dim(),
                                 acc_bound=bound)
    shape = [1] * acc.dim()
    shape[axis] = -1
    # acc holds exact integers, so the cast is exact
    q = fp.output_stage(acc.long(), bias.reshape(shape), multiplier.reshape(shape), exponent.reshape(shape),
                        out_zero, lo, hi, acc_bound=bound)
    return q.to(torch.uint8).contiguous()


def linear_call(x: torch.Tensor, x_zero: int, weight: torch.Tensor, bias: torch.Tensor, multiplier: torch.Tensor,
                exponent: torch.Tensor, out_zero: int, lo: int, hi: int):
    """The host kernels' call of :func:`qlinear` on inputs of ``x``'s shape (it takes the rows), or None."""
    return host_conv.prepared(x, x_zero, weight, bias, multiplier, exponent, out_zero, lo, hi, None,
                              accumulator_bound(weight.shape[1]))


def qlinear(x: torch.Tensor, x_zero: int, weight: torch.Tensor, bias: torch.Tensor, multiplier: torch.Tensor,
            exponent: torch.Tensor, out_zero: int, lo: int, hi: int) -> torch.Tensor:
    call = linear_call(x, x_zero, weight, bias, multiplier, exponent, out_zero, lo, hi)
    if call is not None:
        return call(x.reshape(-1, x.shape[-1]).contiguous())
    xf, wf = x.float().sub_(x_zero), weight.float()
    acc = _chunked(lambda c0, c1: F.linear(xf[..., c0:c1], wf[:, c0:c1]), weight.shape[1], 1)
    return _epilogue(acc, bias, multiplier, exponent, out_zero, lo, hi, acc.dim() - 1, weight.shape[1])


def conv2d_call(x: torch.Tensor, x_zero: int, weight: torch.Tensor, bias: torch.Tensor, multiplier: torch.Tensor,
                exponent: torch.Tensor, out_zero: int, lo: int, hi: int, stride: list[int], padding: list[int],
                dilation: list[int], groups: int):
    """The host kernels' call of :func:`qconv2d` on inputs of ``x``'s shape (it takes them channels last), or
    None where they do not run the layer."""
    geometry = (tuple(stride), tuple(padding), tuple(dilation), groups)
    return host_conv.prepared(x, x_zero, weight, bias, multiplier, exponent, out_zero, lo, hi, geometry,
                              accumulator_bound(weight.numel() // weight.shape[0]))


def qconv2d(x: torch.Tensor, x_zero: int, weight: torch.Tensor, bias: torch.Tensor, multiplier: torch.Tensor,
            exponent: torch.Tensor, out_zero: int, lo: int, hi: int, stride: list[int], padding: list[int],
            dilation: list[int], groups: int) -> torch.Tensor:
    depth = weight.numel() // weight.shape[0]
    call = conv2d_call(x, x_zero, weight, bias, multiplier, exponent, out_zero, lo, hi, stride, padding, dilation,
                       groups)
    if call is not None:  # the integer kernels (dense, or depthwise where float32 is exact)
        return call(host.channels_last(x))
    if groups == 1:
        xf, wf = x.float().sub_(x_zero), weight.float()
        acc = _chunked(lambda c0, c1: F.conv2d(xf[:, c0:c1], wf[:, c0:c1], None, stride, padding, dilation),
                       x.shape[1], weight.shape[2] * weight.shape[3])
    else:  # grouped (depthwise): one convolution, float32 when exact, else float64; channels-last, where
        # torch runs them up to ten times faster than in NCHW
        dtype = accumulation_dtype(depth)
        xf = x.to(dtype, memory_format=torch.channels_last).sub_(x_zero)
        acc = F.conv2d(xf, weight.to(dtype), None, stride, padding, dilation, groups)  # the output stage reorders
    return _epilogue(acc, bias, multiplier, exponent, out_zero, lo, hi, 1, depth)


def qadd(a: torch.Tensor, a_zero: int, a_multiplier: int, a_exponent: int, b: torch.Tensor, b_zero: int,
         b_multiplier: int, b_exponent: int, out_multiplier: int, out_exponent: int, out_zero: int,
         lo: int, hi: int) -> torch.Tensor:
    """TFLite's quantized add: both inputs to a common fine grid (<< 20), add, requantize."""
    if host.library() is not None:
        return host.add(a, a_zero, a_multiplier, a_exponent, b, b_zero, b_multiplier, b_exponent, out_multiplier,
                        out_exponent, out_zero, lo, hi, ADD_LEFT_SHIFT)
    zero = torch.zeros((), dtype=torch.int64)
    bound = 255 << ADD_LEFT_SHIFT

    def rescale(q: torch.Tensor, q_zero: int, m0: int, exponent: int) -> torch.Tensor:
        shifted = (q.long() - q_zero) << ADD_LEFT_SHIFT
        return fp.output_stage(shifted, zero, torch.tensor(m0), torch.tensor(exponent), 0, fp.INT32_MIN,
                               fp.INT32_MAX, acc_bound=bound)

    total = rescale(a, a_zero, a_multiplier, a_exponent) + rescale(b, b_zero, b_multiplier, b_exponent)
    return fp.output_stage(total, zero, torch.tensor(out_multiplier), torch.tensor(out_exponent), out_zero, lo, hi,
                           acc_bound=2 * bound).to(torch.uint8)


ADD_LEFT_SHIFT = 20


def add_multipliers(a_scale: float, b_scale: float, out_scale: float) -> tuple[float, float, float]:
    """The three real multipliers of :func:`qadd` (TFLite's choice: inputs over twice the larger scale)."""
    twice_max = 2 * max(a_scale, b_scale)
    return a_scale / twice_max, b_scale / twice_max, twice_max / ((1 << ADD_LEFT_SHIFT) * out_scale)
