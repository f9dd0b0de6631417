"""ONNX ``Resize`` for ``nn.Upsample`` and ``F.interpolate``, with torch's sampling positions.

torch's modes map onto ``Resize``'s coordinate transformations:

- ``nearest``: the source pixel ``floor(dst / scale)``: ``asymmetric`` with
  ``floor`` rounding;
- ``nearest-exact``: ``floor((dst + 0.5) / scale)``: ``half_pixel`` with
  ``round_prefer_ceil``;
- ``linear`` / ``bilinear`` / ``trilinear``: ``align_corners``, or
  ``pytorch_half_pixel`` (half-pixel centres, and position 0 for an output
  of length 1, as torch computes).

A given ``scale_factor`` is written as ``Resize``'s scales, so that the
positions use it as torch does (not the ratio of the sizes); a given
``size`` as its sizes. In int8 graphs the node passes its input's grid on
(the ``SHARED`` ops of :mod:`qcompile.quant.op_table`), and onnxruntime runs
the QDQ pattern as an integer ``Resize``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from qcompile.errors import QCompileError
from qcompile.ir.node import Node
from qcompile.onnx.sequence_ops import int_slice

if TYPE_CHECKING:
    from qcompile.onnx.builder import Builder

_LINEAR = ("linear", "bilinear", "trilinear")


def resize(b: Builder, node: Node, x: str, settings: dict[str, Any]) -> str:
    """The ONNX value of ``node`` resizing ``x`` with ``settings`` (``size``, ``scale_factor``, ``mode``,
    ``align_corners``, ``recompute_scale_factor``, ``antialias``, as torch names them)."""
    mode = settings.get("mode", "nearest")
    rank = len(node.type.shape)
    if mode not in ("nearest", "nearest-exact", *_LINEAR) or settings.get("antialias"):
        raise QCompileError(f"%{node.name}: resizing with mode={mode!r}"
                            f"{' and antialias' if settings.get('antialias') else ''} is not exported to ONNX yet",
                            hint="nearest, nearest-exact, linear, bilinear and trilinear (without antialias) are")
    if mode == "nearest":
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    elif mode == "nearest-exact":
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "half_pixel",
                 "nearest_mode": "round_prefer_ceil"}
    else:
        corners = "align_corners" if settings.get("align_corners") else "pytorch_half_pixel"
        attrs = {"mode": "linear", "coordinate_transformation_mode": corners}
    factor = settings.get("scale_factor")
    if factor is not None and not settings.get("recompute_scale_factor"):
        factors = list(factor) if isinstance(factor, (list, tuple)) else [factor] * (rank - 2)
        scales = b.const("scales", np.array([1.0, 1.0, *factors], np.float32))
        return b.emit("Resize", [x, "", scales], **attrs)
    # a size, or a scale factor torch turns into one (recompute_scale_factor)
    size = settings.get("size")
    if isinstance(size, Node):  # computed in the graph (x.shape[-2:]): a 1-D int64 value
        spatial = b.value(size)
    elif isinstance(size, (list, tuple)) and any(isinstance(n, Node) for n in size):
        spatial = b.emit("Concat", [b.int_value(n) for n in size], axis=0)
    elif all(isinstance(n, int) for n in node.type.shape[2:]):  # the output's own size
        spatial = b.const("sizes", np.array(node.type.shape[2:], np.int64))
    else:
        raise QCompileError(f"%{node.name}: a resize whose output size is not fixed is not exported to ONNX yet")
    batch_and_channels = int_slice(b, b.emit("Shape", [x]), 0, 2)
    sizes = b.emit("Concat", [batch_and_channels, spatial], axis=0)
    return b.emit("Resize", [x, "", "", sizes], **attrs)
