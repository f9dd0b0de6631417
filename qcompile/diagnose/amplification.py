"""How far one step of rounding travels through a converted model.

Two int8 implementations of one model (torch's kernels and onnxruntime's, or
the ``native`` and ``gemmlowp`` backends) round a few elements of some layers
one step apart. Whether that stays one step at the output is a property of
the model, not of the implementations. :func:`one_step_reach` measures it:
it changes single elements of one layer's integer output by one step, runs
the rest of the model, and counts the final integer outputs of that sample
that moved by more than one step.

A model with a reach near 0 keeps every rounding difference local, so two
implementations agreeing layer by layer agree end to end. A model with a
large reach (MobileNetV2 under the ``x86`` preset: one step at one element of
its first convolution moves most of that image's logits) cannot agree end
to end between two implementations unless they are bit-exact in every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcompile.backends.torch_ao.tensors import integer_codes, with_codes
from qcompile.errors import QCompileError
from qcompile.interpreter import Interpreter
from qcompile.ir.graph import Graph
from qcompile.ir.node import Node
from qcompile.ir.types import TensorType

_INTEGER_TYPES = ("qu8", "qi8", "u8")


@dataclass
class Reach:
    """What one-step changes at ``node`` did to the final integer outputs of the sample.

    Attributes:
        node: The layer whose output was changed.
        trials: How many single elements were changed (one run each).
        moved: Share of the sample's output elements that moved by more than
            one step, averaged over the trials.
        max_lsb: The largest move of any output element, in steps.
    """

    node: str
    trials: int
    moved: float
    max_lsb: int

    def describe(self) -> str:
        return (f"one step at one element of %{self.node} moves {100 * self.moved:.1f}% of that sample's "
                f"output elements by more than 1 LSB (max {self.max_lsb} LSB; mean of {self.trials} elements)")


def _integer(node: Node) -> bool:
    return isinstance(node.type, TensorType) and node.type.dtype in _INTEGER_TYPES


def final_integer_node(graph: Graph) -> Node:
    """The integer value the output dequantize reads: where end-to-end agreement is counted."""
    results = graph.inputs(graph.output_node)
    if len(results) != 1 or results[0].op != "dequantize" or not _integer(graph.inputs(results[0])[0]):
        raise QCompileError("the graph's output is not a single dequantized integer value",
                            hint="measure the reach on a converted graph with one output")
    return graph.inputs(results[0])[0]


def first_integer_layer(graph: Graph) -> Node:
    """The first conv / linear with an integer output: where one-step differences start."""
    for node in graph.nodes():
        if node.op in ("conv2d", "linear") and _integer(node):
            return node
    raise QCompileError("the graph has no integer conv or linear layer", hint="run convert first")


def one_step_reach(graph: Graph, x: torch.Tensor, node: str | None = None, trials: int = 8,
                   seed: int = 0) -> Reach:
    """Change ``trials`` single elements of ``node``'s output (one per run) by one step.

    Args:
        graph: A converted graph (``native`` or ``gemmlowp`` backend).
        x: One input sample with its batch dimension (only the first sample is used).
        node: The layer to change; by default the first integer conv or linear.
        trials: Elements to try, chosen at random (seeded) in the layer's output.
    """
    final = final_integer_node(graph).name
    target = graph.node(node) if node is not None else first_integer_layer(graph)
    if not _integer(target):
        raise QCompileError(f"%{target.name} has no integer output ({target.type})",
                            hint="pick a layer inside the quantized region")
    x = x[:1]
    generator = torch.Generator().manual_seed(seed)
    interpreter = Interpreter(graph)

    def run(edit=None) -> torch.Tensor:
        kept: dict[str, torch.Tensor] = {}

        def keep(n, value):
            if n.name == final:
                kept["codes"] = integer_codes(value).to(torch.int32)

        with torch.no_grad():
            interpreter.run(x, hook=keep, edit=edit)
        return kept["codes"]

    def one_step(n, value):  # a new random element of the target's output, one step up (down at the top)
        if n.name != target.name:
            return None
        codes = integer_codes(value).contiguous().clone()
        flat = codes.view(-1)
        i = int(torch.randint(flat.numel(), (1,), generator=generator))
        flat[i] = flat[i] + 1 if int(flat[i]) < torch.iinfo(codes.dtype).max else flat[i] - 1
        return with_codes(value, codes)

    reference = run()
    moved, worst = [], 0
    for _ in range(trials):
        steps = (run(one_step) - reference).abs()
        moved.append(float((steps > 1).float().mean()))
        worst = max(worst, int(steps.max()))
    return Reach(target.name, trials, sum(moved) / trials, worst)
