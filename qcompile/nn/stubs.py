"""The borders of the quantized region in a float graph: where ``stubs`` puts quantize and dequantize.

Both are the identity on float values; ``observe`` / ``calibrate`` watch
them like any other node, and ``convert`` replaces them with the backend's
quantize and dequantize (codes on the node's grid, and floats again).
"""

from __future__ import annotations

from torch import Tensor, nn


class QuantStub(nn.Module):
    """Where float values enter the quantized region (the identity until ``convert``)."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class DeQuantStub(nn.Module):
    """Where values leave the quantized region (the identity until ``convert``)."""

    def forward(self, x: Tensor) -> Tensor:
        return x
