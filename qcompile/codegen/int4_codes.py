"""Plain int8 weight codes that fit in 4 bits, packed two per byte in the saved file.

qcompile's kernels (the gemmlowp backend) keep each weight as a plain int8
tensor of codes. After ``convert{weight-bits=4}`` (or bit allocation at 4
bits or fewer) every code of such a tensor lies in [-8, 7], and the weights
file stores it as a small dict: the codes offset to [0, 15], two per byte,
and the shape. The emitted ``model.py`` carries the matching unpacking
function, so the file loads with ``torch.load(weights_only=True)`` and
nothing from qcompile. (Torch's quantized weights on the native backend are
packed by :mod:`qcompile.backends.torch_ao.int4`.) Int32 biases and
multipliers are never int8, so only weight codes are packed; an 8-bit
weight's codes reach -127 or 127 in every channel, so they never fit.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

MARKER = "__int4_codes__"
SMALLEST = 16  # fewer codes are not worth a dict


def _fits(value) -> bool:
    return (isinstance(value, torch.Tensor) and value.dtype == torch.int8 and value.numel() >= SMALLEST
            and int(value.min()) >= -8 and int(value.max()) <= 7)


def _packed(codes: torch.Tensor) -> dict:
    offset = (codes.flatten().to(torch.int16) + 8).to(torch.uint8)
    if offset.numel() % 2:
        offset = torch.cat([offset, offset.new_zeros(1)])
    return {MARKER: offset[0::2] | (offset[1::2] << 4), "shape": torch.tensor(codes.shape)}


def pack(state: dict) -> dict | None:
    """``state`` (a flat state dict) with every 4-bit-fitting int8 tensor packed; None where none fits."""
    if not any(_fits(v) for v in state.values()):
        return None
    packed = OrderedDict((k, _packed(v) if _fits(v) else v) for k, v in state.items())
    if hasattr(state, "_metadata"):
        packed._metadata = state._metadata
    return packed


# Written into model.py verbatim (it must not import qcompile).
UNPACK_SOURCE = '''

def _unpack_int4_codes(state):
    """Undo the two-codes-per-byte packing of 4-bit weight codes in the weights file."""
    for key, value in list(state.items()):
        if isinstance(value, dict) and "__int4_codes__" in value:
            packed, shape = value["__int4_codes__"], value["shape"].tolist()
            codes = torch.stack([packed & 15, packed >> 4], dim=1).flatten()
            count = 1
            for dim in shape:
                count *= dim
            state[key] = (codes[:count].to(torch.int16) - 8).to(torch.int8).reshape(shape)
    return state
'''
