"""An int8 ``EmbeddingBag`` that takes every mode: sum, mean and max.

torch's int8 ``EmbeddingBag`` (``torch.ao.nn.quantized.EmbeddingBag``) keeps
the ``mode`` it is given, but its forward hands the kernel mode 0, so every
bag is summed (torch 2.14). :class:`Int8EmbeddingBag` keeps the same uint8
rows with a float scale and offset each, and the same summing kernel, and
finishes the other two modes:

* ``mean``: each bag's sum over its length; an empty bag stays 0, as in float
  torch;
* ``max``: the bag's rows as the kernel reads them
  (``quantized::embedding_byte``), and their largest value per column.

A ``padding_idx`` leaves its id out of every bag, as in float torch: its
rows get weight 0 in the summing kernel and do not count in a mean's length,
and a max skips them (a bag of padding alone is 0).

Either way the result is what float torch gives on the dequantized table, up
to float rounding in the sums.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.ao.nn.quantized as nnq
import torch.nn.functional as F
from torch import Tensor


class Int8EmbeddingBag(nnq.EmbeddingBag):
    """``torch.ao.nn.quantized.EmbeddingBag`` (uint8 rows) in ``sum``, ``mean`` or ``max`` mode, with an
    optional ``padding_idx``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, mode: str = "sum", include_last_offset: bool = False,
                 padding_idx: Optional[int] = None, dtype=torch.quint8):  # noqa: UP045 (TorchScript)
        super().__init__(num_embeddings, embedding_dim, mode=mode, include_last_offset=include_last_offset,
                         dtype=dtype)
        self.padding_idx = -1 if padding_idx is None else padding_idx % num_embeddings  # -1: none

    def forward(self, indices: Tensor, offsets: Optional[Tensor] = None,  # noqa: UP045 (TorchScript)
                per_sample_weights: Optional[Tensor] = None,  # noqa: UP045
                compressed_indices_mapping: Optional[Tensor] = None) -> Tensor:  # noqa: UP045
        packed = self._packed_params._packed_weight
        kept: Optional[Tensor] = None  # noqa: UP045
        if self.padding_idx >= 0:
            kept = indices != self.padding_idx
        if self.mode == "max":
            return self._max(indices, offsets, kept)
        weights = per_sample_weights
        if kept is not None:
            mask = kept.to(torch.float32)
            weights = mask if weights is None else weights * mask
        sums = torch.ops.quantized.embedding_bag_byte(packed, indices, offsets, False, 0, self.pruned_weights,
                                                      weights, compressed_indices_mapping, self.include_last_offset)
        if self.mode != "mean":
            return sums
        if offsets is None:  # ids [bags, ids per bag]
            if kept is None:
                return sums / indices.shape[1]
            return sums / kept.sum(1).clamp(min=1).unsqueeze(1).to(sums.dtype)
        if self.include_last_offset:
            starts, ends = offsets[:-1], offsets[1:]
        else:
            starts, ends = offsets, torch.cat([offsets[1:], offsets.new_full((1,), indices.shape[0])])
        if kept is not None:  # ids kept before each position: a bag's length is the difference at its ends
            before = torch.cat([kept.new_zeros(1, dtype=torch.long), kept.long().cumsum(0)])
            starts, ends = before[starts], before[ends]
        return sums / (ends - starts).clamp(min=1).unsqueeze(1).to(sums.dtype)

    def _max(self, indices: Tensor, offsets: Optional[Tensor], kept: Optional[Tensor]) -> Tensor:  # noqa: UP045
        """Each bag's largest value per column over its rows as the kernel reads them (padding left out)."""
        rows = torch.ops.quantized.embedding_byte(self._packed_params._packed_weight, indices.reshape(-1),
                                                  self.pruned_weights)
        count = rows.shape[0]
        positions = torch.arange(count, device=rows.device)
        padding: Optional[int] = None  # noqa: UP045
        if kept is not None:  # padding ids point at an extra row, which embedding_bag leaves out
            positions = torch.where(kept.reshape(-1), positions, count)
            rows = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])
            padding = count
        if offsets is None:  # ids [bags, ids per bag]
            positions = positions.reshape(indices.shape)
        return F.embedding_bag(positions, rows, offsets, mode="max", include_last_offset=self.include_last_offset,
                               padding_idx=padding)

    def _get_name(self) -> str:
        return "Int8EmbeddingBag"
