"""``observe``: say how each quantized tensor will be observed.

requires: ``stubbed``    provides: ``observed``

Each value that needs its own scale (quantize stubs, conv/linear outputs,
add/mul/cat results...) gets the activation observer of its QConfig; each
conv/linear gets a weight observer (per-channel where the config says so);
ops that reuse their input's grid (pooling, flatten, relu...) get
``shares=%producer`` instead of an observer. Before and after::

    %conv1   = conv2d(%quantize_x, ...) : f32[1,64,112,112]  # mode=static
    %maxpool = max_pool2d(%conv1) : f32[1,64,56,56]  # mode=static

    %conv1   = conv2d(...) ...  # mode=static obs=minmax uint8[0,127] affine | weight: obs=minmax int8[-128,127] sym
    %maxpool = max_pool2d(%conv1) ...  # mode=static shares=%conv1

Options:
    activation-grid: ``backend`` (default) puts the preset's activations on
        the most accurate grid the pipeline's ``convert`` backend computes
        exactly (full 8-bit grids for ``gemmlowp``, :mod:`qcompile.backends.grids`;
        for ``auto`` this pass chooses the backend, :mod:`qcompile.backends.choice`);
        ``preset`` keeps the preset's grid, as PyTorch's quantization would; ``full`` puts
        them on full 8-bit grids whatever the backend: exact on the native
        backend only on CPUs with VNNI (torch's x86 kernels elsewhere sum
        pairs of products in saturating int16), for deployments that run
        only on such CPUs and for measuring what the 7-bit grid costs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from qcompile.backends.choice import AUTO, CHOSEN, choose_backend
from qcompile.backends.grids import activation_grid_for, backend_of, full_activation_grid
from qcompile.ir.graph import Graph
from qcompile.ir.node import Node
from qcompile.pipeline import FLOAT_GRAPH_ONLY, Pass, PassContext, PassResult, register_pass
from qcompile.quant.op_table import TRANSPOSED, category


def grid_owner(node: Node) -> str:
    """Name of the node whose output grid ``node``'s output uses."""
    return node.quant.shares if node.quant.shares is not None else node.name


@register_pass(default_for=("observed",))
@dataclass(frozen=True)
class Observe(Pass):
    """Attach activation and weight observer specs to the quantized region."""

    name = "observe"
    requires = ("stubbed",)
    provides = ("observed",)
    forbids = FLOAT_GRAPH_ONLY

    activation_grid: Literal["backend", "preset", "full"] = "backend"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        before = {n.name: (n.quant.observer, n.quant.weight_observer, n.quant.shares) for n in graph.nodes()}
        counts = {"activations": 0, "weights": 0, "shared": 0}
        preset = ctx.quant_config.qconfig
        if self.activation_grid == "full":
            followed, grids = full_activation_grid(preset.activation), "full 8-bit"
        else:
            grids = backend_of(ctx.remaining_passes) if self.activation_grid == "backend" else None
            if grids == AUTO:  # decided here, on the observed graph: the backends calibrate for different grids
                grids = self._resolve(graph, ctx)
            followed = activation_grid_for(preset.activation, grids)
        for node in graph.nodes():
            if node.quant.mode != "static":
                continue
            qconfig = ctx.quant_config.qconfig_for(node) or preset
            kind = "own" if node.op == "quantize" else category(graph, node)
            if kind in ("own", "weighted"):
                # the preset's grid follows the backend; an override from a config file is the user's own
                node.quant.observer = followed if qconfig.activation == preset.activation else qconfig.activation
                counts["activations"] += 1
                if node.quant.observer != qconfig.activation:
                    counts[f"grids for {grids}"] = counts.get(f"grids for {grids}", 0) + 1
            if kind == "weighted":  # per output channel (axis 0), but transposed convolutions per tensor
                node.quant.weight_observer = (replace(qconfig.weight, per_channel=False) if node.op in TRANSPOSED
                                              else replace(qconfig.weight, axis=0))
                counts["weights"] += 1
            if kind == "shared":
                node.quant.shares = grid_owner(graph.inputs(node)[0])
                counts["shared"] += 1
        after = {n.name: (n.quant.observer, n.quant.weight_observer, n.quant.shares) for n in graph.nodes()}
        return PassResult(after != before, counts)

    @staticmethod
    def _resolve(graph: Graph, ctx: PassContext) -> str:
        """``convert{backend=auto}``'s backend for this graph (:mod:`qcompile.backends.choice`), chosen on a
        copy observed with the preset's grids (the stage refuses by op, not by grid)."""
        if CHOSEN not in graph.attrs:
            trial = graph.copy()
            Observe(activation_grid="preset").run(trial, ctx)
            graph.attrs[CHOSEN] = choose_backend(trial, ctx.log)
        return graph.attrs[CHOSEN]
