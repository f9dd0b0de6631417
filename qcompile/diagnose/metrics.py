"""Error measures shared by the diagnostics: output SQNR, top-1 agreement, values as float."""

from __future__ import annotations

import math
from typing import Any

import torch

from qcompile.backends.torch_ao.tensors import dequantized, is_torch_quantized
from qcompile.errors import QCompileError
from qcompile.ir.node import Node


def as_float(value: Any, node: Node | None = None) -> Any:
    """A graph value as a float tensor: quantized tensors dequantized, gemmlowp uint8 codes by the node's grid."""
    if not isinstance(value, torch.Tensor):
        return value
    if is_torch_quantized(value):
        return dequantized(value)
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


def class_dim(out: torch.Tensor, labels: torch.Tensor | None = None, requested: int | None = None) -> int | None:
    """The axis of ``out`` that holds class scores, or None when it is not known to hold any.

    ``requested`` (``--class-dim``) wins. Otherwise labels decide: the class
    axis is the one whose removal leaves the labels' shape (``[N, T, C]``
    scores with ``[N, T]`` labels: the last axis; torch's ``[N, C, T]``
    convention: axis 1, preferred when both fit). Without labels only a
    ``[N, C]`` output is taken to be class scores: a ``[N, T, C]`` tagger and a
    ``[N, C, H, W]`` feature map or segmentation look alike.
    """
    if requested is not None:
        if not -out.dim() <= requested < out.dim() or requested % out.dim() == 0:
            raise QCompileError(f"class dimension {requested} is not a class axis of an output of shape "
                                f"{tuple(out.shape)}", hint="pick one of the axes after the batch axis, "
                                f"1..{out.dim() - 1} (or -1 for the last)")
        return requested % out.dim()
    if labels is not None:
        fits = [d for d in range(1, out.dim()) if out.shape[:d] + out.shape[d + 1:] == labels.shape]
        if not fits:
            raise QCompileError(f"labels of shape {tuple(labels.shape)} fit no axis of the model's output "
                                f"{tuple(out.shape)}: removing one axis of class scores should leave the labels' "
                                f"shape", hint="check that the data's labels belong to this model")
        return 1 if 1 in fits else fits[0]
    if out.dim() == 2 and out.shape[1] >= 2:
        return 1
    return None


def agreement(out: torch.Tensor, reference: torch.Tensor, dim: int | None = None) -> float | None:
    """Share of equal top-1 predictions along ``dim`` (None for outputs not known to be class scores)."""
    dim = class_dim(reference) if dim is None else dim
    if dim is None or out.shape[dim] < 2:
        return None
    return float((out.argmax(dim) == reference.argmax(dim)).float().mean())


def top_k_accuracy(out: torch.Tensor, labels: torch.Tensor, k: int, dim: int) -> float:
    """Share of labels among the ``k`` highest scores along ``dim`` (k=1: top-1 accuracy)."""
    k = min(k, out.shape[dim])
    hits = (out.topk(k, dim=dim).indices == labels.unsqueeze(dim)).any(dim)
    return float(hits.float().mean())


def first_tensor(value: Any) -> torch.Tensor:
    """The first tensor of a (possibly nested) output."""
    while isinstance(value, (tuple, list)):
        value = value[0]
    return value


def fmt_db(value: float) -> str:
    return "exact" if math.isinf(value) else f"{value:.2f}"
