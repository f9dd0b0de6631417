"""Probing torch's int8 transposed convolutions before a layer is given to them.

torch 2.14's x86 and fbgemm engines compute some transposed convolutions
wrongly in int8: a ``ConvTranspose2d(8, 8, kernel_size=2, stride=2)`` (the
usual decoder upsampling of a U-Net) comes out at -11 dB SQNR against the
same int8 weights and input run in float, where every other kernel size
tried (1-4, strides 1-3, padding 0-1) gives 33-36 dB; the qnnpack engine
gets all of them right. Rather than list the failing shapes, ``stubs`` runs
each configuration once, on this engine, with random weights and input
codes, against float arithmetic on the same codes (only the output rounding
differs), and keeps the layer float where the kernel misses by more than
rounding can. Results are cached per configuration and engine.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from qcompile.backends.torch_ao.warnings import torch_deprecations_silenced

MIN_SQNR_DB = 30.0  # 8-bit output rounding alone gives about 40 dB on the probe


def transposed_kernel_ok(node_op: str, attrs: dict, engine: str) -> tuple[bool, float]:
    """Whether torch's int8 kernel computes this transposed convolution right on ``engine``, and its SQNR."""
    def tup(value, n):
        return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n

    n = int(node_op[-2])
    sqnr = _probe(n, attrs["in_channels"], attrs["out_channels"], tup(attrs["kernel_size"], n),
                  tup(attrs.get("stride", 1), n), tup(attrs.get("padding", 0), n), tup(attrs.get("output_padding", 0), n),
                  engine)
    return sqnr >= MIN_SQNR_DB, sqnr


@functools.cache
@torch_deprecations_silenced()
def _probe(n: int, in_channels: int, out_channels: int, kernel: tuple, stride: tuple, padding: tuple,
           output_padding: tuple, engine: str) -> float:
    import torch.ao.nn.quantized as nnq

    previous = torch.backends.quantized.engine
    generator = torch.Generator().manual_seed(0)
    try:
        torch.backends.quantized.engine = engine
        weight = torch.randn(in_channels, out_channels, *kernel, generator=generator) * 0.1
        bias = torch.randn(out_channels, generator=generator) * 0.1
        weight_q = torch.quantize_per_tensor(weight, float(weight.abs().max()) / 127, 0, torch.qint8)
        x = torch.quantize_per_tensor(torch.randn(2, in_channels, *(6,) * n, generator=generator), 0.03, 128,
                                      torch.quint8)
        convolve = getattr(F, f"conv_transpose{n}d")
        with torch.no_grad():
            reference = convolve(x.dequantize(), weight_q.dequantize(), bias, stride, padding, output_padding)
            module = getattr(nnq, f"ConvTranspose{n}d")(in_channels, out_channels, kernel, stride, padding,
                                                        output_padding)
            module.set_weight_bias(weight_q, bias)
            low, high = min(float(reference.min()), 0.0), max(float(reference.max()), 0.0)
            module.scale = max(high - low, 1e-6) / 255
            module.zero_point = round(-low / module.scale)
            out = module(x).dequantize()
    except Exception:  # noqa: BLE001 - an engine without this kernel: the layer stays float
        return -math.inf
    finally:
        torch.backends.quantized.engine = previous
    noise = float((out - reference).pow(2).mean())
    return math.inf if noise == 0 else 10 * math.log10(float(reference.pow(2).mean()) / noise)
