"""Normalization modules as ONNX ops: batch norm (1-D, 2-D, 3-D), group norm, instance norm.

Eval-mode batch norm is ``BatchNormalization`` with the running statistics.
Group norm has no op at the opsets onnxruntime runs everywhere, so it is
written the way it is defined: the input reshaped to ``[N, groups, -1]``,
normalized per row by ``InstanceNormalization`` (unit scale, zero bias), and
reshaped back, then the per-channel weight and bias. Instance norm without
running statistics is ``InstanceNormalization``; with them it normalizes by
the running mean and variance in eval mode, which is a batch norm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from qcompile.errors import QCompileError
from qcompile.ir.node import Node

if TYPE_CHECKING:
    from qcompile.onnx.builder import Builder

OPS = ("batch_norm1d", "batch_norm2d", "batch_norm3d", "group_norm", "instance_norm1d", "instance_norm2d",
       "instance_norm3d")


def normalization(b: Builder, node: Node, x: str) -> str:
    """The ONNX value computing ``node``, an ``nn`` normalization module of :data:`OPS`."""
    a = node.attrs
    eps = float(a["eps"])
    if node.op.startswith("batch_norm") or (node.op.startswith("instance_norm") and a.get("track_running_stats")):
        return _batch_norm(b, node, x, eps)
    if node.op.startswith("instance_norm"):
        channels = a["num_features"]
        weight, bias = _affine(b, node, channels, a.get("affine", False))
        return b.emit("InstanceNormalization", [x, weight, bias], epsilon=eps)
    groups, channels = a["num_groups"], a["num_channels"]
    ones, zeros = (b.const(f"{node.name}_{k}", np.full(groups, v, np.float32)) for k, v in (("one", 1), ("zero", 0)))
    rows = b.emit("Reshape", [x, b.const("groups", np.array([0, groups, -1], np.int64))])
    normalized = b.emit("Reshape", [b.emit("InstanceNormalization", [rows, ones, zeros], epsilon=eps),
                                    b.emit("Shape", [x])])
    if not a.get("affine", True):
        return normalized
    rank = len(b.graph.inputs(node)[0].type.shape)
    per_channel = [channels] + [1] * (rank - 2)
    weight, bias = (b.const(f"{node.name}_{k}", b.graph.param(node, k).float().reshape(per_channel))
                    for k in ("weight", "bias"))
    return b.emit("Add", [b.emit("Mul", [normalized, weight]), bias])


def _batch_norm(b: Builder, node: Node, x: str, eps: float) -> str:
    channels = node.attrs["num_features"]
    weight, bias = _affine(b, node, channels, node.attrs.get("affine", True))
    mean, var = (b.graph.param(node, k) for k in ("running_mean", "running_var"))
    if mean is None or var is None:
        raise QCompileError(f"%{node.name}: a batch norm without running statistics is not exported to ONNX",
                            hint="export a model in eval mode with track_running_stats=True")
    mean, var = (b.const(f"{node.name}_{k}", v.float()) for k, v in (("running_mean", mean), ("running_var", var)))
    return b.emit("BatchNormalization", [x, weight, bias, mean, var], epsilon=eps)


def _affine(b: Builder, node: Node, channels: int, affine: bool) -> tuple[str, str]:
    """The module's weight and bias, or ones and zeros where it has none."""
    if affine:
        return tuple(b.const(f"{node.name}_{k}", b.graph.param(node, k).float()) for k in ("weight", "bias"))
    return (b.const(f"{node.name}_weight", torch.ones(channels)), b.const(f"{node.name}_bias", torch.zeros(channels)))
