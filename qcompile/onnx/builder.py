"""The ONNX builder every writer appends to: fresh value names, initializers, nodes, and the integer weights.

:class:`Builder` holds the model being written (its nodes and initializers,
and which ONNX value each IR node became). The writers above it (``export``
for the QDQ form, ``qoperator``, and the per-op modules of this package) call
:meth:`Builder.emit` and :meth:`Builder.const`; :meth:`Builder.qdq` wraps a
value on its node's grid, and :meth:`Builder.integer_weight` writes integer
weight codes and the int32 bias behind their DequantizeLinear, from plain
tensors (:meth:`Builder.weight` reads a torch module's weights into it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from qcompile.backends.torch_ao.tensors import integer_codes, is_torch_quantized, per_tensor_grid, weight_grid
from qcompile.errors import QCompileError
from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, Ref
from qcompile.quant.op_table import TRANSPOSED
from qcompile.quant.qparams import quantize_bias

OPSET = 21


class Builder:
    """The ONNX model being written from one graph (see the module docstring)."""

    def __init__(self, graph: Graph, opset: int = OPSET, int4: bool = False, dynamic: str = "exact"):
        self.graph = graph
        self.opset = opset  # torch.onnx writes the float ops qcompile does not in the same opset
        self.int4 = int4  # the opset has INT4 (21 and later)
        self.dynamic = dynamic  # "exact" (torch's rounding) or "fused" (qcompile.onnx.fused_dynamic)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.names: dict[str, list[str] | str] = {}  # IR node -> ONNX value name(s)
        self.codes: dict[str, str] = {}  # IR node -> its QuantizeLinear output (QDQ form)
        self.counter = 0

    # ------------------------------------------------------------- helpers
    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}__{self.counter}"

    def const(self, base: str, value: Any, dtype=None) -> str:
        name = self.fresh(base)
        array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value, dtype=dtype)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def int4_const(self, base: str, value: torch.Tensor) -> str:
        import ml_dtypes  # onnx's own dependency for its sub-byte types

        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(value.numpy().astype(ml_dtypes.int4), name))  # packed
        return name

    def emit(self, op: str, inputs: list[str], outputs: list[str] | None = None, domain: str = "", **attrs) -> str:
        outputs = outputs or [self.fresh(op.lower())]
        self.nodes.append(helper.make_node(op, inputs, outputs, domain=domain or None, **attrs))
        return outputs[0]

    def value(self, node: Node) -> str:
        name = self.names[node.name]
        if isinstance(name, list):
            raise QCompileError(f"%{node.name} produces several values; use getitem on it")
        return name

    def args(self, node: Node) -> list[Any]:
        """Positional args with refs replaced by the producer IR nodes."""
        return [self.resolve(node, a) for a in node.args]

    def kwargs(self, node: Node) -> dict[str, Any]:
        """Keyword args with refs replaced by the producer IR nodes."""
        return {k: self.resolve(node, v) for k, v in node.kwargs.items()}

    def resolve(self, node: Node, value: Any) -> Any:
        if isinstance(value, Ref):
            return self.graph.inputs(node)[value.index]
        if isinstance(value, (list, tuple)):
            return type(value)(self.resolve(node, v) for v in value)
        return value

    def int_value(self, value: Any) -> str:
        """A 1-D int64 ONNX value for an int constant or an int-valued IR node."""
        if isinstance(value, Node):
            return self.emit("Unsqueeze", [self.value(value), self.const("axis0", np.array([0], np.int64))])
        return self.const("int", np.array([value], np.int64))

    def folded(self, node: Node, constants: dict) -> bool:
        """Whether ``node`` was computed from constants alone (:func:`fold_constants`); its value, if anything
        reads it, becomes an initializer."""
        if node.name not in constants:
            return False
        if constants[node.name] is not None:
            self.names[node.name] = self.const(node.name, param_value(constants[node.name]))
        return True

    # --------------------------------------------------------- quantization
    def grid(self, node: Node) -> tuple[str, str]:
        """The node's output scale and zero point as initializers."""
        q = node.quant.qparams
        if q is None:
            raise QCompileError(f"%{node.name} has no scale; QOperator export needs a converted graph")
        dtype = np.uint8 if q.dtype == "uint8" else np.int8
        return (self.const(f"{node.name}_scale", np.array(float(q.scale), np.float32)),
                self.const(f"{node.name}_zp", np.array(int(q.zero_point), dtype)))

    def dequantize(self, codes: str, node: Node) -> str:
        """DequantizeLinear of integer ``codes`` on the node's output grid."""
        return self.emit("DequantizeLinear", [codes, *self.grid(node)], [self.fresh(f"{node.name}_dq")])

    def qdq(self, value: str, node: Node) -> str:
        """QuantizeLinear -> DequantizeLinear on the node's output grid."""
        q = node.quant.qparams
        if q is None or q.per_channel:
            return value
        scale, zero = self.grid(node)
        quantized = self.emit("QuantizeLinear", [value, scale, zero], [self.fresh(f"{node.name}_q")])
        self.codes[node.name] = quantized
        return self.emit("DequantizeLinear", [quantized, scale, zero], [self.fresh(f"{node.name}_dq")])

    def weight(self, node: Node, transposed: bool = False) -> tuple[str, str | None]:
        """(weight, bias) value names: float initializers, or int8/int32 behind DequantizeLinear.

        ``transposed`` gives a linear's weight as MatMul reads it, [in, out]: a
        float weight is stored that way (so that onnxruntime's quantization
        tools find it as an initializer), an int8 one is transposed after
        its DequantizeLinear.
        """
        weight = self.graph.param(node, "weight")
        bias = self.graph.param(node, "bias")
        if node.target.startswith("qcompile.nn.qat."):
            from qcompile.nn.qat import fake_quantize_weight

            weight = fake_quantize_weight(weight, node.attrs.get("weight_per_channel", True))
        if not is_torch_quantized(weight):
            weight = weight.detach().float()
            w = self.const(f"{node.name}_weight", weight.t().contiguous() if transposed else weight)
            b = self.const(f"{node.name}_bias", bias.detach().float()) if bias is not None else None
            return w, b
        if node.op in TRANSPOSED:  # one scale (torch's int8 transposed convolutions take no other), [in, out, ...]
            (scales, zps), axis = per_tensor_grid(weight), 0
        else:
            scales, zps, axis = weight_grid(weight)
        input_scale = float(self.graph.inputs(node)[0].quant.qparams.scale)
        bias_codes = quantize_bias(bias, scales.float().double() * input_scale) if bias is not None else None
        return self.integer_weight(node, integer_codes(weight), scales, zps, axis, bias_codes, input_scale, transposed)

    def integer_weight(self, node: Node, codes: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor,
                       axis: int, bias_codes: torch.Tensor | None, input_scale: float,
                       transposed: bool = False) -> tuple[str, str | None]:
        """(weight, bias) value names for integer codes on their grid: int8 (or INT4 where the codes fit) behind
        a per-channel DequantizeLinear, the int32 bias behind one on the accumulator's grid (input scale x
        weight scale), as onnxruntime's QDQ fusion expects."""
        scales, zps, codes = scales.float(), zero_points.to(torch.int8), codes.to(torch.int8)
        if self.int4 and int(codes.min()) >= -8 and int(codes.max()) <= 7 and int(zps.abs().max()) <= 7:
            # 4-bit weights (convert{weight-bits=4}, bitalloc): INT4 initializers, two codes per byte on disk
            w_int, w_zp = self.int4_const(f"{node.name}_weight_q", codes), self.int4_const(f"{node.name}_weight_zp", zps)
        else:
            w_int, w_zp = self.const(f"{node.name}_weight_q", codes), self.const(f"{node.name}_weight_zp", zps)
        w_scale = self.const(f"{node.name}_weight_scale", scales)
        w = self.emit("DequantizeLinear", [w_int, w_scale, w_zp], axis=axis)
        b = None
        if bias_codes is not None:
            bias_scale = scales.double() * input_scale
            b = self.emit("DequantizeLinear", [self.const(f"{node.name}_bias_q", bias_codes.to(torch.int32)),
                                               self.const(f"{node.name}_bias_scale", bias_scale.float()),
                                               self.const(f"{node.name}_bias_zp", torch.zeros(bias_scale.shape, dtype=torch.int32))],
                          axis=0)
        return (self.emit("Transpose", [w], perm=[1, 0]) if transposed else w), b


def param_value(tensor: torch.Tensor) -> torch.Tensor:
    """A graph parameter as an initializer: floats as float32; integer and bool buffers (a relative position
    index, a mask) keep their type."""
    tensor = tensor.detach()
    return tensor.float() if tensor.is_floating_point() else tensor
