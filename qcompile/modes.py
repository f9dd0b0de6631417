"""Research numbers beside deployable ones: what ``simulate`` promises and what integer kernels deliver.

The paper's best numbers use per-channel activation scales and per-channel
activation bit widths. Integer kernels cannot do either: a GEMM needs one
scale and one width per input tensor. :func:`compare_modes` reruns the
pipeline from the calibrated graph three ways and scores each against the
float model on the same data:

``research``
    the pipeline as written (``simulate``, fake quantization in float);
``deployable``
    the same passes with their per-channel activation options off
    (``aciq{per-channel=false}``, ``bitalloc{activations=false}``), still
    simulated;
``integer``
    the deployable passes with ``simulate`` replaced by ``convert``: the
    integer model on the native kernels. Banner's weight correction
    (``simulate{bias-correct=...}``) moves weights off the integer grid, so
    this row uses the empirical ``bias-correct`` pass in its place.

Only the last row is what an integer deployment gets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from qcompile.diagnose.metrics import (
    agreement,
    as_float,
    class_dim,
    first_tensor,
    fmt_db,
    sqnr_db,
    top_k_accuracy,
)
from qcompile.diagnose.snapshot import Snapshot
from qcompile.errors import QCompileError
from qcompile.interpreter import Interpreter
from qcompile.ir.graph import Graph
from qcompile.pipeline import Pass, PassContext, PassManager, Pipeline
from qcompile.pipeline.registry import pass_class


@dataclass
class ModeRow:
    mode: str
    pipeline: str
    sqnr_db: float
    agreement: float | None
    top1: float | None

    def row(self) -> str:
        top1 = "-" if self.top1 is None else f"{self.top1:.4f}"
        agree = "-" if self.agreement is None else f"{self.agreement:.4f}"
        return f"| {self.mode} | {fmt_db(self.sqnr_db)} | {agree} | {top1} | `{self.pipeline}` |"


HEADER = "| mode | SQNR dB | top-1 agreement | top-1 accuracy | passes after calibrate |\n|---|---|---|---|---|"


def _deployable(passes: tuple[Pass, ...]) -> tuple[Pass, ...]:
    out = []
    for p in passes:
        if p.name == "aciq":
            p = dataclasses.replace(p, per_channel=False)
        elif p.name == "bitalloc":
            p = dataclasses.replace(p, activations=False)
        out.append(p)
    return tuple(out)


def _integer(passes: tuple[Pass, ...]) -> tuple[Pass, ...]:
    out: list[Pass] = []
    for p in passes:
        if p.name != "simulate":
            out.append(p)
            continue
        if p.bias_correct != "none" and not any(q.name == "bias-correct" for q in out):
            out.append(pass_class("bias-correct")())
        out.append(pass_class("convert")(weight_bits=p.weight_bits))
    return tuple(out)


def _score(graph: Graph, batches, references) -> tuple[float, float, float | None]:
    interpreter = Interpreter(graph)
    out = torch.cat([as_float(first_tensor(interpreter.run(x))) for x, _ in batches])
    reference = torch.cat(references)
    if batches[0][1] is None:
        return sqnr_db(out, reference), agreement(out, reference), None
    labels = torch.cat([y for _, y in batches])
    dim = class_dim(out, labels)
    return sqnr_db(out, reference), agreement(out, reference, dim), top_k_accuracy(out, labels, 1, dim)


def compare_modes(snapshot: Snapshot, ctx: PassContext, data) -> list[ModeRow]:
    """Rerun the pipeline from ``snapshot`` in the three modes and score them on ``data``."""
    if snapshot.calibrated is None or not any(p.name == "simulate" for p in snapshot.rest):
        raise QCompileError("--modes compares simulate's research mode with what integer kernels deliver, "
                            "and the pipeline has no simulate pass after calibrate",
                            hint="e.g. --passes fuse,calibrate,aciq{bits=4 per-channel=true},simulate{bits=4}")
    simulate = next(p for p in snapshot.rest if p.name == "simulate")
    batches = list(data.labelled()) if data.labels is not None else [(b[0], None) for b in data]
    float_run = Interpreter(snapshot.float_graph)
    references = [float_run.run(x) for x, _ in batches]
    rows = []
    for mode, passes in (("research", snapshot.rest), ("deployable", _deployable(snapshot.rest)),
                         ("integer", _integer(_deployable(snapshot.rest)))):
        graph = snapshot.calibrated.copy()
        if mode == "integer" and simulate.bits < 8:
            for node in graph.nodes():  # simulate's default activation width, where no pass chose one
                if node.quant.observer is not None and node.quant.bits is None:
                    node.quant.bits = simulate.bits
        pipeline = Pipeline(passes)
        PassManager(pipeline).run(graph, ctx)
        rows.append(ModeRow(mode, str(pipeline), *_score(graph, batches, references)))
    return rows
