"""Float ops that qcompile's emitters do not write, written by torch's own ONNX exporter and inlined.

The exporter writes the ops it knows itself (convolutions, the int8
region's Quantize/DequantizeLinear pairs, shape arithmetic). Any other float
op, outside the int8 region or between a DequantizeLinear and a
QuantizeLinear where it has no int8 kernel, is not refused: it runs alone
through ``torch.onnx.export`` (its TorchScript exporter, which needs no
other package) on example inputs of the node's traced shapes and dtypes,
every dimension declared dynamic, and the nodes torch writes join the file
under the IR node's name. Before and after, for ``%norm``::

    %norm = norm(%relu, dim=1, keepdim=True) : f32[1,1,28,28]

    %norm__torch__3 = ReduceL2[keepdims=1](%relu_dq__7, %norm__torch__2)   # %norm__torch__2: the axes

Contract:
    * Only float ops: quantized modules and ops (torch's quantized modules, qcompile's
      integer kernels) never come here.
    * Tensor arguments are the file's values; every other argument (dims,
      ``keepdim``, a norm's order) is a constant of the file. An argument
      computed at run time that is not a tensor (``x.size(1)``) is refused.
    * Where torch cannot write the op either, the error names the op and
      torch's reason, and the way out (the emitted PyTorch module runs it).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import onnx
import torch
from onnx import numpy_helper

from qcompile.backends.torch_ao.lowering import NATIVE_TARGETS
from qcompile.errors import QCompileError
from qcompile.ir.modules import build_module
from qcompile.ir.node import Node, NodeKind
from qcompile.ir.targets import resolve_target
from qcompile.ir.types import TensorType
from qcompile.onnx.builder import Builder

INTEGER_TARGETS = (*NATIVE_TARGETS, "qcompile.")  # lowered by the int8 emitters, or nowhere


def writes(node: Node) -> bool:
    """Whether ``node`` is a float op that torch's exporter may write (not an integer kernel)."""
    return node.kind in (NodeKind.FUNCTION, NodeKind.METHOD, NodeKind.MODULE) and not node.target.startswith(
        INTEGER_TARGETS)


class _Op(torch.nn.Module):
    """The node's call, its tensor arguments in ``forward``'s and every other one fixed."""

    def __init__(self, call, args: list, kwargs: dict, slots: list[tuple[str, Any]]):
        super().__init__()
        self.call, self.args, self.kwargs, self.slots = call, args, kwargs, slots  # a module call: a submodule

    def forward(self, *tensors: torch.Tensor):
        args, kwargs = list(self.args), dict(self.kwargs)
        for (where, key), tensor in zip(self.slots, tensors, strict=True):
            (args if where == "arg" else kwargs)[key] = tensor
        return self.call(*args, **kwargs)


def _example(node: Node) -> torch.Tensor:
    t = node.type
    dtype = torch.float32 if t.dtype in ("qu8", "qi8") else t.torch_dtype
    if dtype.is_floating_point:
        return torch.rand(t.shape, dtype=dtype) + 0.5  # positive: a log or a sqrt traces without NaN warnings
    if dtype == torch.bool:
        return torch.ones(t.shape, dtype=torch.bool)
    return torch.ones(t.shape, dtype=dtype)


def _refused(node: Node, reason: str) -> QCompileError:
    if node.kind == NodeKind.FUNCTION and not node.target.startswith(("torch.", "operator.", "builtins.")):
        hint = (f"lower the model with --frontend export (Python: lower(..., frontend='export')), which traces "
                f"{node.target} down to torch operations")  # a function torch.fx keeps whole
    else:
        hint = ("ONNX cannot run this op: drop --export onnx (the emitted PyTorch module runs it), or write the "
                "model without it")
    return QCompileError(f"%{node.name}: {node.target} is not exported to ONNX: {reason}", hint=hint)


@contextlib.contextmanager
def _silenced_output() -> Iterator[None]:
    """Standard output and error, down to the file descriptors, discarded: torch's exporter prints its IR
    from C++ when it fails, and the error that follows says what matters."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 1), os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
    finally:
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        os.close(saved[0]), os.close(saved[1])


def _callable(b: Builder, node: Node):
    if node.kind == NodeKind.MODULE:
        state = {key: b.graph.params[p] for key, p in node.params.items()}
        return build_module(node.target, node.attrs, state, path=node.source.module_path).eval()
    if node.kind == NodeKind.METHOD:
        return lambda self, *args, **kwargs: getattr(self, node.target)(*args, **kwargs)
    return resolve_target(node.target)


def torch_written(b: Builder, node: Node) -> str | list[str]:
    """The ONNX value(s) of ``node``, from the nodes ``torch.onnx.export`` writes for it alone.

    Raises:
        QCompileError: where torch cannot write the op, or an argument is a
            non-tensor value computed at run time.
    """
    args, kwargs = b.args(node), b.kwargs(node)
    slots, inputs, examples = [], [], []
    for where, items in (("arg", enumerate(args)), ("kwarg", kwargs.items())):
        for key, value in items:
            if not isinstance(value, Node):
                if any(isinstance(v, Node) for v in value) if isinstance(value, (list, tuple)) else False:
                    raise _refused(node, "it takes a list of computed values")
                continue
            if not isinstance(value.type, TensorType) or isinstance(b.names.get(value.name), list):
                raise _refused(node, f"its argument %{value.name} is not one tensor computed at run time")
            slots.append((where, key))
            inputs.append(b.value(value))
            examples.append(_example(value))
    fixed_args = [None if isinstance(a, Node) else a for a in args]
    fixed_kwargs = {k: None if isinstance(v, Node) else v for k, v in kwargs.items()}
    op = _Op(_callable(b, node), fixed_args, fixed_kwargs, slots).eval()
    try:
        with torch.no_grad():
            result = op(*examples)
    except Exception as exc:  # noqa: BLE001 - the op, run alone on inputs of its traced shapes
        raise _refused(node, f"it does not run alone on inputs of its traced shapes ({type(exc).__name__}: {exc})"
                       ) from None
    several = isinstance(result, (tuple, list))
    parts = list(result) if several else [result]
    if not all(p is None or isinstance(p, torch.Tensor) for p in parts):
        raise _refused(node, "it returns something other than tensors")
    names_in = [f"in{i}" for i in range(len(inputs))]
    names_out = [f"out{i}" for i, p in enumerate(parts) if p is not None]
    axes = {name: {d: f"{name}_{d}" for d in range(example.dim())} for name, example in zip(names_in, examples,
                                                                                            strict=True)}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad(), _silenced_output():
            warnings.simplefilter("ignore")
            torch.onnx.export(op, tuple(examples), buffer, dynamo=False, opset_version=b.opset, input_names=names_in,
                              output_names=names_out, dynamic_axes=axes, do_constant_folding=True)
    except Exception as exc:  # noqa: BLE001 - whatever torch's exporter raises, the user gets one named error
        raise _refused(node, f"torch.onnx cannot write it either ({type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no message'})") from None
    values = iter(_inline(b, node, onnx.load_from_string(buffer.getvalue()),
                          dict(zip(names_in, inputs, strict=True)), names_out))
    written = [None if p is None else next(values) for p in parts]  # (out, None): MultiheadAttention's, unweighted
    return written if several else written[0]


def _inline(b: Builder, node: Node, model: onnx.ModelProto, inputs: dict[str, str], outputs: list[str]) -> list[str]:
    """``model``'s nodes and initializers added to the builder, renamed apart; the values of ``outputs``."""
    if any(o.domain not in ("", "ai.onnx") for o in model.opset_import):
        raise _refused(node, "torch.onnx writes it with operators outside ONNX's standard set")
    renamed = dict(inputs)

    def name(value: str) -> str:
        if value and value not in renamed:
            renamed[value] = b.fresh(f"{node.name}__torch")
        return renamed.get(value, value)

    for initializer in model.graph.initializer:
        renamed[initializer.name] = b.const(f"{node.name}__torch", numpy_helper.to_array(initializer))
    for proto in model.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in proto.attribute):
            raise _refused(node, f"torch.onnx writes it with control flow ({proto.op_type})")
        copy = onnx.NodeProto()
        copy.CopyFrom(proto)
        copy.name = b.fresh(f"{node.name}_{proto.op_type}")
        copy.input[:] = [name(v) for v in proto.input]
        copy.output[:] = [name(v) for v in proto.output]
        b.nodes.append(copy)
    return [name(o) for o in outputs]
