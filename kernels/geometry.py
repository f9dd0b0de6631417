"""The output size of a convolution, the same in every implementation of ``qconv2d``."""

from __future__ import annotations


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """One spatial size of a convolution's output."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
