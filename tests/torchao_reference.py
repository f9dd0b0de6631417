"""torch.ao FX post-training quantization, the reference qcompile is compared with."""

from __future__ import annotations

import warnings

import torch
from torch.ao.quantization import QConfigMapping, default_qconfig, get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx


def fx_quantize(model, calib_batches, preset: str):
    """torch.ao FX PTQ of ``model`` with the qconfig qcompile's ``preset`` mirrors."""
    torch.backends.quantized.engine = "x86"
    mapping = (QConfigMapping().set_global(default_qconfig) if preset == "default"
               else get_default_qconfig_mapping("x86"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(model, mapping, (calib_batches[0][0][:1],))
        with torch.no_grad():
            for (x,) in calib_batches:
                prepared(x)
        return convert_fx(prepared)


def sqnr(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB."""
    return float(10 * torch.log10(exact.pow(2).mean() / (approx - exact).pow(2).mean()))


def lsb_agreement(a: torch.Tensor, b: torch.Tensor, scale: float) -> tuple[float, float]:
    """(share within 1 LSB, share exact) of two dequantized outputs on the same grid."""
    steps = ((a - b).abs() / scale).round()
    return float((steps <= 1).float().mean()), float((steps == 0).float().mean())
