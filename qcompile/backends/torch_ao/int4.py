"""Packing int8-container weights whose codes fit in 4 bits, two per byte, for the saved file.

A quantized weight whose integer codes all lie in [-8, 7] (4-bit weights from
``convert{weight-bits=4}`` or ``bitalloc``) is written as a small dict: the
codes offset to [0, 15] and packed two per byte, plus its per-channel scales
and zero points. The emitted ``model.py`` carries the matching unpacking
function, so the file loads with ``torch.load(weights_only=True)`` and
nothing from qcompile. A W4 model's weights take an eighth of the float
bytes, plus one scale per channel.
"""

from __future__ import annotations

from typing import Any

import torch

MARKER = "__int4__"


def _fits(t: torch.Tensor) -> bool:
    return (t.is_quantized and t.dtype == torch.qint8 and t.qscheme() == torch.per_channel_affine
            and t.numel() > 0 and int(t.int_repr().min()) >= -8 and int(t.int_repr().max()) <= 7)


def pack(value: Any) -> Any:
    """``value`` with every 4-bit-fitting quantized tensor (also inside tuples/dicts) packed."""
    if isinstance(value, torch.Tensor) and _fits(value):
        codes = (value.int_repr().flatten().to(torch.int16) + 8).to(torch.uint8)
        if codes.numel() % 2:
            codes = torch.cat([codes, codes.new_zeros(1)])
        packed = codes[0::2] | (codes[1::2] << 4)
        return {MARKER: packed, "shape": torch.tensor(value.shape), "scales": value.q_per_channel_scales(),
                "zero_points": value.q_per_channel_zero_points(), "axis": torch.tensor(value.q_per_channel_axis())}
    if isinstance(value, tuple):
        return tuple(pack(v) for v in value)
    if isinstance(value, list):
        return [pack(v) for v in value]
    if isinstance(value, dict):
        return {k: pack(v) for k, v in value.items()}
    return value


def contains_packed(value: Any) -> bool:
    if isinstance(value, dict):
        return MARKER in value or any(contains_packed(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return any(contains_packed(v) for v in value)
    return False


# Written into model.py verbatim (it must not import qcompile).
UNPACK_SOURCE = '''

def _unpack_int4(value):
    """Undo the two-codes-per-byte packing of 4-bit weights in the weights file."""
    if isinstance(value, dict) and "__int4__" in value:
        packed, shape = value["__int4__"], value["shape"].tolist()
        codes = torch.stack([packed & 15, packed >> 4], dim=1).flatten()
        count = 1
        for dim in shape:
            count *= dim
        codes = (codes[:count].to(torch.int16) - 8).to(torch.int8).reshape(shape)
        return torch._make_per_channel_quantized_tensor(codes, value["scales"], value["zero_points"],
                                                        int(value["axis"]))
    if isinstance(value, tuple):
        return tuple(_unpack_int4(v) for v in value)
    if isinstance(value, list):
        return [_unpack_int4(v) for v in value]
    if isinstance(value, dict):
        out = type(value)((k, _unpack_int4(v)) for k, v in value.items())
        if hasattr(value, "_metadata"):
            out._metadata = value._metadata  # quantized modules read their version from it
        return out
    return value
'''
