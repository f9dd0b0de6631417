"""GEMMLOWP fixed-point arithmetic on torch tensors: the CPU twin of ``gemmlowp.h``.

Every function works elementwise on int64 tensors that hold int32 values and
matches the C++ header bit for bit (spec section 7; tests/test_kernels.py
checks both against the spec's vectors and against each other):

* :func:`srdhm`: ``a * b / 2^31`` rounded to nearest, ties toward +infinity,
  ``INT32_MIN * INT32_MIN`` saturating to ``INT32_MAX``;
* :func:`rdbpot`: ``x / 2^e`` rounded to nearest, ties away from zero;
* :func:`output_stage`: bias, requantization by ``(m0, exponent)``, output
  zero point and clamp;
* :func:`quantize_multiplier`: a real multiplier as ``m0 * 2^(exponent - 31)``.
"""

from __future__ import annotations

import math

import torch

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def quantize_multiplier(real: float) -> tuple[int, int]:
    """``real = m0 * 2^(exponent - 31)`` with ``m0`` in ``[2^30, 2^31)`` (TFLite's QuantizeMultiplier).

    Multipliers too small for a 31-bit right shift flush to ``(0, 0)``.
    """
    if real < 0 or not math.isfinite(real):
        raise ValueError(f"a requantization multiplier must be finite and non-negative, got {real}")
    if real == 0:
        return 0, 0
    mantissa, exponent = math.frexp(real)  # real = mantissa * 2^exponent, mantissa in [0.5, 1)
    m0 = math.floor(mantissa * 2**31 + 0.5)  # exact in double; ties away from zero
    if m0 == 2**31:
        m0, exponent = m0 // 2, exponent + 1
    if exponent < -31:
        return 0, 0
    if exponent > 30:
        raise ValueError(f"requantization multiplier {real} is too large for int32 fixed point")
    return m0, exponent


def quantize_multipliers(reals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantize_multiplier` for each element: ``(m0, exponent)`` as int32 tensors."""
    pairs = [quantize_multiplier(float(r)) for r in reals.double().flatten()]
    m0 = torch.tensor([p[0] for p in pairs], dtype=torch.int32).reshape(reals.shape)
    exponent = torch.tensor([p[1] for p in pairs], dtype=torch.int32).reshape(reals.shape)
    return m0, exponent


def _saturate(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(INT32_MIN, INT32_MAX)


def srdhm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = torch.broadcast_tensors(a.long(), b.long())
    p = a * b
    nudge = torch.where(p >= 0, torch.full_like(p, 1 << 30), torch.full_like(p, 1 - (1 << 30)))
    r = torch.div(p + nudge, 1 << 31, rounding_mode="trunc")  # C's division, as in fixedpoint.h
    return torch.where((a == INT32_MIN) & (b == INT32_MIN), torch.full_like(r, INT32_MAX), r)


def rdbpot(x: torch.Tensor, e: torch.Tensor | int) -> torch.Tensor:
    x = x.long()
    e = torch.as_tensor(e, dtype=torch.int64)
    mask = (torch.ones_like(e) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).long()
    return (x >> e) + (remainder > threshold).long()


def multiply_by_quantized_multiplier(acc: torch.Tensor, m0: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    exponent = torch.as_tensor(exponent, dtype=torch.int64)
    left, right = exponent.clamp(min=0), (-exponent).clamp(min=0)
    return rdbpot(srdhm(_saturate(acc.long() * (torch.ones_like(left) << left)), m0), right)


def output_stage(acc: torch.Tensor, bias: torch.Tensor, m0: torch.Tensor, exponent: torch.Tensor,
                 zero_point: int, lo: int, hi: int, acc_bound: int | None = None) -> torch.Tensor:
    """``clamp(MBQM(acc + bias) + zero_point, lo, hi)`` with saturating int32 additions.

    The same function as composing :func:`srdhm` and :func:`rdbpot`, written
    for speed on large tensors: in place, SRDHM in its closed form
    ``(p + 2^30) >> 31`` (round half up), and the saturations skipped where
    ``acc_bound`` (a bound on ``|acc|``) shows they cannot trigger.
    """
    x = acc.long() + bias.long()
    bias_bound = int(bias.abs().max()) if bias.numel() else 0
    bounded = acc_bound is not None and acc_bound + bias_bound < 2**30
    if not bounded:
        x.clamp_(INT32_MIN, INT32_MAX)
    exponent = exponent.long()
    if bool((exponent > 0).any()):
        x = _saturate(x * (torch.ones_like(exponent) << exponent.clamp(min=0)))
        bounded = False
    m0 = m0.long()
    saturating = bool((m0 == INT32_MIN).any())
    if saturating:
        edge = (x == INT32_MIN) & (m0 == INT32_MIN)
    x = torch.addcmul(torch.tensor(1 << 30), x, m0).bitwise_right_shift_(31)  # SRDHM: (x * m0 + 2^30) >> 31
    if saturating:
        x = torch.where(edge, torch.full_like(x, INT32_MAX), x)
    if bounded:  # |x| < 2^30 (m0 < 2^31): int32 has room for the rounding below, at half the memory traffic
        x = x.to(torch.int32)
    # RDBPOT in one pass: (x + 2^(r-1) - [x < 0]) >> r rounds half away from zero (r >= 1)
    right = (-exponent).clamp(min=0).to(x.dtype)
    negative = x < 0
    x.add_((torch.ones_like(right) << right) >> 1).sub_(negative.to(x.dtype)).bitwise_right_shift_(right)
    if bool((right == 0).any()):
        x.add_(negative.to(x.dtype) * (right == 0))  # r = 0 leaves x as it was
    x.add_(zero_point)
    return x.clamp_(lo, hi)


def round_half_away(v: torch.Tensor) -> torch.Tensor:
    """``std::round`` of float32 values (ties away from zero), as ``gemmlowp.h`` computes it."""
    t = torch.trunc(v)
    fraction = v - t
    return t + (fraction >= 0.5).to(v.dtype) - (fraction <= -0.5).to(v.dtype)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``round(clamp(zp + x / scale, qmin, qmax))`` in float32; NaN becomes ``qmin``."""
    v = zero_point.float() + x.float() / scale.float()
    v = torch.where(v > qmin, v, torch.full_like(v, qmin))
    v = torch.where(v < qmax, v, torch.full_like(v, qmax))
    return round_half_away(v).to(torch.int32)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    return scale.float() * (q.to(torch.int32) - zero_point.to(torch.int32)).float()


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Signed 4-bit codes (an even count) two per byte, the even element in the low nibble."""
    flat = codes.flatten().to(torch.int32)
    return ((flat[0::2] & 0xF) | ((flat[1::2] & 0xF) << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    nibbles = torch.stack([packed.to(torch.int32) & 0xF, packed.to(torch.int32) >> 4], dim=1).flatten()
    return torch.where(nibbles >= 8, nibbles - 16, nibbles).to(torch.int8)
