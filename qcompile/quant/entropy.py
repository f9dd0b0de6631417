"""Bits per value of the integer codes: what variable-length coding would store.

The paper measures the Shannon entropy of each layer's quantized values (an
entropy coder needs about that many bits per value, fewer than the grid's
width when the codes cluster). This works on converted graphs of either
backend: activations from the integer tensors the interpreter produces on
sample data, weights from their int8 codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcompile.backends.torch_ao.tensors import integer_codes, is_torch_quantized
from qcompile.interpreter import Interpreter
from qcompile.ir.graph import Graph
from qcompile.ir.node import NodeKind


@dataclass
class CodeEntropy:
    name: str
    kind: str  # "activation" or "weight"
    bits: float  # Shannon entropy in bits per value
    values: int


def entropy_bits(codes: torch.Tensor) -> float:
    """Shannon entropy (bits per value) of a tensor of integer codes."""
    counts = torch.bincount(codes.flatten().to(torch.int64) - int(codes.min()))
    p = counts[counts > 0].double() / codes.numel()
    return float(-(p * torch.log2(p)).sum()) + 0.0  # + 0.0: no negative zero for a constant


def code_entropy(graph: Graph, batches) -> tuple[list[CodeEntropy], float]:
    """Per-tensor entropies and their average weighted by value count."""
    counts: dict[str, torch.Tensor] = {}
    sizes: dict[str, int] = {}

    def hook(node, value):
        if node.quant.observer is None or not isinstance(value, torch.Tensor):
            return
        if is_torch_quantized(value) or value.dtype == torch.uint8:  # native int8 tensors, or gemmlowp's uint8 codes
            codes = integer_codes(value).flatten().to(torch.int64)
            histogram = torch.bincount(codes, minlength=256)
            counts[node.name] = counts.get(node.name, 0) + histogram
            sizes[node.name] = sizes.get(node.name, 0) + codes.numel()

    interpreter = Interpreter(graph)
    for batch in batches:
        interpreter.run(*(batch if isinstance(batch, (tuple, list)) else (batch,)), hook=hook)
    rows = []
    for name, histogram in counts.items():
        p = histogram[histogram > 0].double() / sizes[name]
        rows.append(CodeEntropy(name, "activation", float(-(p * torch.log2(p)).sum()), sizes[name]))
    for node in graph.find(kind=NodeKind.MODULE):
        weight = graph.param(node, "weight") if "weight" in node.params else None
        if weight is not None and (is_torch_quantized(weight) or weight.dtype == torch.int8):
            rows.append(CodeEntropy(node.name, "weight", entropy_bits(integer_codes(weight)), weight.numel()))
    total = sum(r.values for r in rows)
    average = sum(r.bits * r.values for r in rows) / total if total else 0.0
    return rows, average
