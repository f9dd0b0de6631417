"""``calibrate``: run the calibration data through the graph once and keep statistics.

When a later pass asks for more (``aciq`` needs mean, mean absolute deviation
and standard deviation, per tensor and per channel, of the value before any
fused ReLU), the same single pass collects them too.

requires: ``observed``    provides: ``calibrated``

One streaming pass over ``ctx.calib_data``: the interpreter runs each batch
and every observed value updates its observer (memory stays at a few
kilobytes per observer, whatever the number of samples). Weights are
observed directly. The statistics land in ``node.quant.stats`` /
``node.quant.weight_stats`` and print as ranges::

    %conv1 = conv2d(...) ...  # mode=static obs=minmax uint8[0,127] affine range=[0, 7.31] | weight: ... range=[64 channels, -1.2..1.3]

Under ``torchrun`` each process calibrates its share of the batches
(:mod:`qcompile.distributed.shards`) and the observers merge exactly
(:meth:`~qcompile.quant.observers.Observer.reduce`): every process ends with
the statistics, and the graph, that one process computes on the same batches.

Options:
    max_batches: Stop after this many batches (0: use all).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcompile.distributed.shards import my_batch_count, my_batches
from qcompile.errors import QCompileError
from qcompile.interpreter import Interpreter
from qcompile.ir.graph import Graph
from qcompile.ir.node import NodeKind
from qcompile.ir.types import TensorType
from qcompile.pipeline import FLOAT_GRAPH_ONLY, Pass, PassContext, PassResult, option, register_pass
from qcompile.quant.observers import MomentsObserver, make_observer
from qcompile.quant.stats_io import load_statistics


def check_batch(graph: Graph, batch: tuple, index: int, purpose: str = "calibration") -> None:
    """Refuse a batch whose tensors do not fit the graph's inputs, or hold NaN/Inf.

    ``purpose`` names the data in the message (``calibration``, ``check``).
    """
    inputs = graph.input_nodes
    if len(batch) != len(inputs):
        names = ", ".join(f"%{node.name}" for node in inputs)
        raise QCompileError(f"{purpose} batch {index} has {len(batch)} tensors; the model takes {len(inputs)} "
                            f"({names})", hint="give one tensor per model input, in the order of its forward()")
    fixed = graph.attrs.get("fixed_batch")
    for value, node in zip(batch, inputs, strict=True):
        expected = node.type
        if fixed is not None and isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] != fixed:
            raise QCompileError(
                f"{purpose} batch {index} holds {value.shape[0]} samples, but the model was "
                f"exported for batches of exactly {fixed} (torch.export fixes every dimension "
                "it is not told is dynamic)",
                hint=f"pass --batch-size {fixed}, or export again with "
                "dynamic_shapes={'x': {0: torch.export.Dim('batch')}} for the model's inputs")
        if not isinstance(value, torch.Tensor):
            raise QCompileError(f"{purpose} batch {index}: input %{node.name} is a {type(value).__name__}, "
                                "not a tensor")
        if isinstance(expected, TensorType):
            if value.dim() != len(expected.shape) or tuple(value.shape[1:]) != expected.shape[1:]:
                raise QCompileError(
                    f"{purpose} batch {index}: input %{node.name} has shape {list(value.shape)}, "
                    f"the model expects [N, {', '.join(map(str, expected.shape[1:]))}]",
                    hint="check the data's preprocessing (--preprocess) against the model's input")
            if value.dtype != expected.torch_dtype:
                raise QCompileError(
                    f"{purpose} batch {index}: input %{node.name} is {value.dtype}, the model expects "
                    f"{expected.torch_dtype}", hint="convert the data (e.g. to float32 in [0, 1])")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise QCompileError(f"{purpose} batch {index}: input %{node.name} contains NaN or Inf",
                                hint="clean the data; observers cannot place a range around NaN")


def observe_weights(graph: Graph) -> int:
    """Fill ``weight_stats`` of every node with a weight observer; return how many."""
    count = 0
    for node in graph.find(kind=NodeKind.MODULE):
        spec = node.quant.weight_observer
        if spec is not None:
            observer = make_observer(spec)
            observer.update(graph.param(node, "weight"))
            node.quant.weight_stats = observer.stats()
            count += 1
    return count


@register_pass
@dataclass(frozen=True)
class LoadStats(Pass):
    """Take calibration statistics from a file (ctx.statistics_file) instead of data."""

    name = "load-stats"
    requires = ("observed",)
    provides = ("calibrated",)
    forbids = FLOAT_GRAPH_ONLY

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        path = getattr(ctx, "statistics_file", None)
        if path is None:
            raise QCompileError("'load-stats' needs a statistics file", hint="pass --stats FILE")
        weights = observe_weights(graph)
        return PassResult(True, {"activations": load_statistics(graph, path), "weights": weights})


@register_pass(default_for=("calibrated",))
@dataclass(frozen=True)
class Calibrate(Pass):
    """Collect activation and weight statistics from calibration data in one pass."""

    name = "calibrate"
    requires = ("observed",)
    provides = ("calibrated",)
    forbids = FLOAT_GRAPH_ONLY

    max_batches: int = option(0, low=0)  # 0: every batch

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if ctx.calib_data is None:
            raise QCompileError("'calibrate' needs calibration data",
                                hint="pass --calib DATA (an image folder, .npz/.pt tensors, "
                                "module:function, or a built-in set such as builtin:photos)")
        world = ctx.world
        merged = world.distributed  # per-batch records, for an exact merge in the global batch order
        observers = {n.name: make_observer(n.quant.observer, merged) for n in graph.nodes() if n.quant.observer}
        wanted = {s for p in ctx.remaining_passes for s in p.needs_statistics}
        moments = {name: MomentsObserver(merged) for name in observers} if "moments" in wanted else {}
        fused_act = {n.name for n in graph.nodes() if n.act}
        interpreter = Interpreter(graph)

        def hook(node, value):
            observer = observers.get(node.name)
            if observer is not None:
                observer.update(value)
                if node.name in moments and node.name not in fused_act:
                    moments[node.name].update(value)

        def pre_activation(node, value):
            # ACIQ's statistics describe the value before a fused ReLU
            if node.name in moments:
                moments[node.name].update(value)

        total = my_batch_count(ctx.calib_data, world, self.max_batches)
        batches = 0
        with world.together("calibrate"):
            for index, batch in my_batches(ctx.calib_data, world, self.max_batches):
                batch = batch if isinstance(batch, (tuple, list)) else (batch,)
                check_batch(graph, tuple(batch), index)
                interpreter.run(*batch, hook=hook, pre_activation_hook=pre_activation if moments else None)
                batches += 1
                ctx.progress("calibrate", batches, total)
            if batches == 0:
                raise QCompileError("the calibration data is empty" if not world.distributed else
                                    f"rank {world.rank} got no calibration batch",
                                    hint="check the --calib path and --calib-samples")
        for name, observer in observers.items():
            observer.reduce(world)
            graph.node(name).quant.stats = observer.stats()
            if name in moments:
                moments[name].reduce(world)
                graph.node(name).quant.stats.moments = moments[name].stats()
        batches = int(world.all_reduce(torch.tensor(batches)))
        weights = observe_weights(graph)
        return PassResult(True, {"batches": batches, "activations": len(observers), "weights": weights})
