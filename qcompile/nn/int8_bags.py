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
    """``torch.ao.nn.quantized.EmbeddingBag`` (uint8 rows) in ``sum``, ``mean`` or ``max`` mode."""

    def forward(self, indices: Tensor, offsets: Optional[Tensor] = None,  # noqa: UP045 (TorchScript)
                per_sample_weights: Optional[Tensor] = None,  # noqa: UP045
                compressed_indices_mapping: Optional[Tensor] = None) -> Tensor:  # noqa: UP045
        packed = self._packed_params._packed_weight
        if self.mode == "max":
            rows = torch.ops.quantized.embedding_byte(packed, indices.reshape(-1), self.pruned_weights)
            if offsets is None:  # ids [bags, ids per bag]
                return rows.reshape(indices.shape[0], indices.shape[1], rows.shape[-1]).amax(1)
            positions = torch.arange(rows.shape[0], device=rows.device)
            return F.embedding_bag(positions, rows, offsets, mode="max", include_last_offset=self.include_last_offset)
        sums = torch.ops.quantized.embedding_bag_byte(packed, indices, offsets, False, 0, self.pruned_weights,
                                                      per_sample_weights, compressed_indices_mapping,
                                                      self.include_last_offset)
        if self.mode != "mean":
            return sums
        if offsets is None:
            return sums / indices.shape[1]
        if self.include_last_offset:
            starts, ends = offsets[:-1], offsets[1:]
        else:
            starts, ends = offsets, torch.cat([offsets[1:], offsets.new_full((1,), indices.shape[0])])
        return sums / (ends - starts).clamp(min=1).unsqueeze(1).to(sums.dtype)

    def _get_name(self) -> str:
        return "Int8EmbeddingBag"
