"""Padding modules read as ``F.pad``'s arguments: ``nn.ZeroPad2d``, ``nn.ConstantPad1d``, ``nn.ReflectionPad2d``, ...

A padding module's node (op ``zero_pad2d``, ``reflection_pad1d``, ...) holds
the constructor's ``padding`` (one width for every side, or torch's
``(last axis begin, end, axis before it begin, end, ...)``) and, for the
constant pads, ``value``. :func:`module_padding` gives them in ``F.pad``'s
terms, for the passes and exporters that treat both forms alike.
"""

from __future__ import annotations

import re

from qcompile.ir.node import Node, NodeKind

PAD_MODULE = re.compile(r"^(zero|constant|reflection|replication|circular)_pad([123])d$")
_MODES = {"zero": "constant", "constant": "constant", "reflection": "reflect", "replication": "replicate",
          "circular": "circular"}


def module_padding(node: Node) -> tuple[tuple[int, ...], str, float] | None:
    """``(widths, mode, value)`` as ``F.pad`` takes them, for a padding module's node; None for any other node."""
    match = PAD_MODULE.match(node.op) if node.kind == NodeKind.MODULE else None
    if match is None:
        return None
    kind, dims = match.groups()
    widths = node.attrs["padding"]
    widths = (widths,) * (2 * int(dims)) if isinstance(widths, int) else tuple(widths)
    return widths, _MODES[kind], float(node.attrs.get("value", 0.0))
