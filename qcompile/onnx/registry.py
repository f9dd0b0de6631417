"""ONNX emitters of function and method calls, registered by op name.

An emitter is one small function that writes one op (or a family sharing
its arguments) and returns the ONNX value, or the list of values, it
computes; ``None`` means "not this form of the op" (``dropout`` in training
mode, ``getattr`` of an attribute it does not know), and the driver
(:func:`qcompile.onnx.calls.call`) goes on to torch's own exporter or a
clear error. Registering::

    @emits("flatten")
    def flatten(b: Builder, node: Node, args: list, kw: dict) -> str:
        ...

This module is the bottom of the export beside :mod:`.builder`: it imports
no other part of ``qcompile.onnx``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from qcompile.ir.node import Node
    from qcompile.onnx.builder import Builder

Emitter = Callable[["Builder", "Node", list, dict], Union[str, list, None]]  # noqa: UP007
_EMITTERS: dict[str, Emitter] = {}


def emits(*ops: str) -> Callable[[Emitter], Emitter]:
    """Register the decorated function as the emitter of ``ops`` (one op name each)."""

    def register(function: Emitter) -> Emitter:
        for op in ops:
            if op in _EMITTERS and _EMITTERS[op] is not function:
                raise ValueError(f"two ONNX emitters for {op!r}: {_EMITTERS[op].__qualname__} and "
                                 f"{function.__qualname__}")
            _EMITTERS[op] = function
        return function

    return register


def emitter(op: str) -> Emitter | None:
    """The emitter registered for ``op``, if any."""
    return _EMITTERS.get(op)


def registered_ops() -> list[str]:
    """Every op name with an emitter, sorted."""
    return sorted(_EMITTERS)
