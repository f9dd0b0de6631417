"""The graph's inputs in ONNX: their element types and which axes vary.

Every input's axis 0 is the batch, ``batch``. The axes a model was lowered
with as dynamic (``lower(..., dynamic_axes=[1])``, ``--dynamic-axes 1``: a
sequence length; or per input, ``--dynamic-axes ids:1``) are declared
``<input>_axis<k>``; the others keep the example's size. Float inputs are
``float32``; integer inputs (token ids for an ``nn.Embedding``) keep their
integer type.

Declaring an axis dynamic does not make the model take any size: a
positional table or a reshape to a constant fixes it. So an export with
dynamic axes runs the model once in onnxruntime with those axes one shorter
than the example's (one longer where the example's is 2: torch.export
takes no size under 2), and stops with the reason if it does not run.
Shorter, because a text model calibrated at its longest length (BERT's 512
positions) takes any length up to that one, and no longer.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import TensorProto, helper

from qcompile.errors import QCompileError
from qcompile.frontend.dynamic_axes import describe
from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind
from qcompile.ir.types import TensorType

_ELEMENT_TYPES = {"f32": TensorProto.FLOAT, "i64": TensorProto.INT64, "i32": TensorProto.INT32}


def dynamic_axes(graph: Graph) -> dict[str, list[int]]:
    """Input name -> its axes besides the batch that vary between calls, as lowering recorded them."""
    return dict(graph.attrs.get("dynamic_axes", {}))


def graph_inputs(graph: Graph) -> list[onnx.ValueInfoProto]:
    """One ``ValueInfoProto`` per tensor input of ``graph``, in order."""
    axes = dynamic_axes(graph)
    return [_declare(node, axes.get(node.name, [])) for node in graph.find(kind=NodeKind.INPUT)]


def _declare(node: Node, axes: list[int]) -> onnx.ValueInfoProto:
    t = node.type
    if not isinstance(t, TensorType) or t.dtype not in _ELEMENT_TYPES:
        raise QCompileError(f"model input {node.name!r} is {t}; ONNX export takes float32 or integer tensors",
                            hint="give the model tensor inputs (wrap it to build other values inside forward)")
    dims = ["batch"] + [f"{node.name}_axis{k}" if k in axes else size for k, size in enumerate(t.shape[1:], 1)]
    return helper.make_tensor_value_info(node.name, _ELEMENT_TYPES[t.dtype], dims)


def check_dynamic_axes(model: onnx.ModelProto, graph: Graph) -> None:
    """Run ``model`` once with each dynamic axis one shorter than the example's (or one longer, from 2);
    a clear error if it does not run."""
    axes = dynamic_axes(graph)
    if not axes:
        return
    from qcompile.onnx.runtime.session import in_memory_session

    feeds, rng = {}, np.random.default_rng(0)
    for node in graph.find(kind=NodeKind.INPUT):
        shape = [_other(size) if k in axes.get(node.name, []) else size for k, size in enumerate(node.type.shape)]
        shape[0] = graph.attrs.get("fixed_batch", shape[0])
        dtype = helper.tensor_dtype_to_np_dtype(_ELEMENT_TYPES[node.type.dtype])
        # integers: zeros, an index every embedding table has
        feeds[node.name] = rng.standard_normal(shape, dtype) if dtype == np.float32 else np.zeros(shape, dtype)
    try:
        in_memory_session(model, log_severity=4).run(None, feeds)  # the failure is reported below, once
    except Exception as error:  # onnxruntime's own exception types, each with a message
        sizes = ", ".join(f"{name} {list(v.shape)}" for name, v in feeds.items())
        reason = _tidy(str(error))
        raise QCompileError(
            f"the exported model does not run with {describe(axes)} at another size than the example's ({sizes}): "
            f"{reason}",
            hint="the model fixes that size somewhere (a positional table, a reshape to a constant, a size "
            "from the example): leave --dynamic-axes out, or make the model read the size from its input") from None


def _other(size: int) -> int:
    return size - 1 if size > 2 else size + 1


def _tidy(message: str) -> str:
    """onnxruntime's failure without its source location: the node's op and what went wrong."""
    line = message.strip().splitlines()[0]
    op = re.search(r"while running (\w+) node", line)
    what = re.split(r"(?:was false\.|Status Message:) ", line)[-1].strip()
    return f"its {op.group(1)} fails: {what}" if op else line
