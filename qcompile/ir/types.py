"""Value types of the IR: tensors, Python scalars, tuples and None.

A tensor type prints as ``f32[1,64,56,56]``. Non-tensor values show up where a
model computes with shapes (``x.size(0)``) or returns several values at once
(``chunk``, ``nn.MultiheadAttention``); they print as ``int``, ``(f32[2], int)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

_DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "f32",
    torch.float64: "f64",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.int16: "i16",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.bool: "bool",
}


@cache
def _names() -> dict[torch.dtype, str]:
    """The names above, and those of torch's quantized dtypes (the native backend's: ``qu8``, ``qi8``, ...)."""
    from qcompile.backends.torch_ao.tensors import IR_NAMES

    return _DTYPE_NAMES | IR_NAMES


@cache
def _dtypes() -> dict[str, torch.dtype]:
    return {name: dtype for dtype, name in _names().items()}


def dtype_name(dtype: torch.dtype) -> str:
    """Short IR name of a torch dtype (``torch.float32`` -> ``f32``)."""
    return _names().get(dtype, str(dtype).removeprefix("torch."))


def dtype_from_name(name: str) -> torch.dtype:
    """Inverse of :func:`dtype_name`."""
    return _dtypes()[name]


@dataclass(frozen=True)
class TensorType:
    """A tensor's element type and shape."""

    dtype: str
    shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"

    @property
    def torch_dtype(self) -> torch.dtype:
        return dtype_from_name(self.dtype)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class ScalarType:
    """A Python scalar: ``int``, ``float``, ``bool``, ``str`` or a torch dtype/device."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class TupleType:
    """A tuple or list of values (``torch.Size`` included)."""

    elements: tuple[ValueType, ...]

    def __str__(self) -> str:
        inner = ", ".join(str(e) for e in self.elements)
        return f"({inner},)" if len(self.elements) == 1 else f"({inner})"


@dataclass(frozen=True)
class NoneType:
    """The value ``None`` (for instance the unused weights of attention)."""

    def __str__(self) -> str:
        return "none"


ValueType = TensorType | ScalarType | TupleType | NoneType


def type_of(value: object) -> ValueType:
    """The IR type of a runtime value seen while tracing or interpreting."""
    if isinstance(value, torch.Tensor):
        return TensorType(dtype_name(value.dtype), tuple(int(d) for d in value.shape))
    if value is None:
        return NoneType()
    if isinstance(value, (tuple, list)):
        return TupleType(tuple(type_of(v) for v in value))
    if isinstance(value, bool):
        return ScalarType("bool")
    if isinstance(value, int):
        return ScalarType("int")
    if isinstance(value, float):
        return ScalarType("float")
    return ScalarType(type(value).__name__)
