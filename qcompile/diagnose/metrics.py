"""Error measures shared by the diagnostics: output SQNR, top-1 agreement, values as float."""

from __future__ import annotations

import math
from typing import Any

import torch

from qcompile.ir.node import Node


def as_float(value: Any, node: Node | None = None) -> Any:
    """A graph value as a float tensor: quantized tensors dequantized, gemmlowp uint8 codes by the node's grid."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.is_quantized:
        return value.dequantize()
    q = node.quant.qparams if node is not None else None
    if value.dtype == torch.uint8 and q is not None:
        return (value.float() - float(q.zero_point)) * float(q.scale)
    return value.float()


def sqnr_db(out: torch.Tensor, reference: torch.Tensor) -> float:
    """``10 log10(|ref|^2 / |out - ref|^2)``; ``inf`` when identical."""
    noise = float((out.double() - reference.double()).pow(2).sum())
    signal = float(reference.double().pow(2).sum())
    if noise == 0:
        return math.inf
    return 10 * math.log10(max(signal, 1e-300) / noise)


def agreement(out: torch.Tensor, reference: torch.Tensor) -> float | None:
    """Share of equal top-1 predictions (None for outputs that are not class scores)."""
    if out.dim() != 2 or out.shape[1] < 2:
        return None
    return float((out.argmax(1) == reference.argmax(1)).float().mean())


def first_tensor(value: Any) -> torch.Tensor:
    """The first tensor of a (possibly nested) output."""
    while isinstance(value, (tuple, list)):
        value = value[0]
    return value


def fmt_db(value: float) -> str:
    return "exact" if math.isinf(value) else f"{value:.2f}"
