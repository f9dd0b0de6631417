"""``lower``: put the neutral integer stage on one backend's kernels.

requires: ``integer-stage``    provides: ``on-kernels``

Reads only the stage ``integerize`` left (:mod:`qcompile.integer.stage`),
never another backend's graph. ``gemmlowp`` swaps each reference module for
the kernel module of the same arguments and tensors
(:mod:`qcompile.backends.gemmlowp`): the CPU twin, or CUDA. The result is
the graph ``convert{backend=gemmlowp}`` makes. Before and after::

    %conv_layers_0 = conv2d(...) : u8[1,32,28,28] {..., target='qcompile.integer.reference.QConv2d'}
    %conv_layers_0 = conv2d(...) : u8[1,32,28,28] {..., target='qcompile.kernels.modules.QConv2d'}

Options:
    backend: ``gemmlowp`` (qcompile's kernels). torch's quantized modules
        (``convert{backend=native}``) are built from ``convert``'s decisions
        and cover more ops than the integer stage does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from qcompile.ir.graph import Graph
from qcompile.pipeline import INTEGER_STAGE, ON_KERNELS, Pass, PassContext, PassResult, register_pass


@register_pass
@dataclass(frozen=True)
class Lower(Pass):
    """Put the neutral integer stage on one backend's kernels."""

    name = "lower"
    requires = (INTEGER_STAGE,)
    provides = (ON_KERNELS,)
    forbids = (ON_KERNELS,)

    backend: Literal["gemmlowp"] = "gemmlowp"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        from qcompile.backends.gemmlowp import lower_to_gemmlowp

        return PassResult(True, lower_to_gemmlowp(graph))
