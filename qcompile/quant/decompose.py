"""SiLU as ``x * sigmoid(x)``, so that a quantized graph runs it on integer kernels.

Neither torch (no quantized SiLU kernel) nor ONNX (no SiLU op at opset 21)
has SiLU, so a quantized SiLU would stay float, with a dequantize before and
a quantize after it: on EfficientNet-B0, 49 float islands that made the int8
ONNX export slower than the float model in onnxruntime. Both have the two
halves: a quantized sigmoid (on its fixed grid, [0, 1] in steps of 1/256) and
a quantized mul (on the grid observed for the SiLU's output). The ``stubs``
pass rewrites each SiLU it quantizes into those two nodes; onnxruntime fuses
them into ``QLinearSigmoid`` and ``QLinearMul``, the way its own
``quantize_static`` quantizes the Sigmoid / Mul pair torch.onnx writes.
The cost is one more rounding: the sigmoid's, at most 1/512.
"""

from __future__ import annotations

from collections.abc import Callable

from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind, Ref
from qcompile.quant.op_table import is_float_tensor


def decompose_silu(graph: Graph, wanted: Callable[[Node], bool]) -> int:
    """Rewrite every float SiLU for which ``wanted(node)`` holds; return how many.

    The SiLU node becomes the product and keeps its name (skip lists,
    per-layer reports and the float twin's values still find it); the
    sigmoid is a new node, ``NAME_sigmoid``.
    """
    rewritten = 0
    for node in list(graph.nodes()):
        if node.op != "silu" or not is_float_tensor(node) or not wanted(node):
            continue
        x = graph.inputs(node)[0]
        sigmoid = graph.add_node("sigmoid", NodeKind.FUNCTION, [x], name=f"{node.name}_sigmoid",
                                 target="torch.sigmoid", type=x.type, source=node.source, after=x)
        node.op, node.kind, node.target = "mul", NodeKind.FUNCTION, "operator.mul"
        node.attrs, node.params = {}, {}
        graph.set_inputs(node, [x, sigmoid], args=(Ref(0), Ref(1)), kwargs={})
        rewritten += 1
    return rewritten
