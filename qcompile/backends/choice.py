"""``backend=auto``: qcompile's own kernels where the integer stage covers the graph, torch's engine elsewhere.

``convert``'s default backend is ``auto``. It becomes ``gemmlowp`` (full
8-bit activation grids, exact on every CPU, :mod:`.grids`) when the
integer stage (:mod:`qcompile.integer.stage`) can rewrite every quantized op
of the graph, and ``native`` (torch's quantized modules, 7-bit activation
grids on x86) otherwise. The choice must be made before calibration, because
the two backends calibrate for different grids: ``observe`` makes it on the
observed graph, by rewriting a copy of it into the integer stage with the
real weights and a stand-in range for every activation (the stage refuses by
op and attributes, never by range), and records it in
``graph.attrs["auto-backend"]``. ``convert`` then lowers to
that backend. A graph that reaches ``convert`` without ``observe`` (after
quantization-aware training, whose grids are learned) is tried on the
calibrated grids themselves, at ``convert``.

The choice is printed with ``convert``'s counts, e.g. ``backend auto ->
gemmlowp: 1``, and, for ``native``, the reason as it is made::

    qcompile: convert: backend auto -> native: the integer stage (qcompile's kernels) does not cover these
    quantized ops: layer_norm (%ln1 and others)
"""

from __future__ import annotations

import copy

import torch

from qcompile.errors import QCompileError
from qcompile.ir.graph import Graph
from qcompile.ir.quant_types import TensorStats

AUTO = "auto"
CHOSEN = "auto-backend"  # graph.attrs key: the backend auto resolved to


def stage_refusal(graph: Graph) -> str | None:
    """Why the integer stage cannot take ``graph`` (observed or calibrated), or None if it can.

    ``graph`` is not changed: a copy is rewritten, its uncalibrated
    activations given the stand-in range [-1, 1] and its weights their
    statistics.
    """
    from qcompile.passes.calibrate import observe_weights
    from qcompile.passes.convert import Convert
    from qcompile.passes.integerize import integerize

    trial = copy.deepcopy(graph)
    observe_weights(trial)
    for node in trial.nodes():
        q = node.quant
        if q.observer is not None and q.stats is None and q.clip is None:
            lo, hi = torch.tensor(-1.0), torch.tensor(1.0)
            q.stats = TensorStats(lo=lo, hi=hi, min=lo, max=hi)
    try:
        integerize(trial, Convert(backend="gemmlowp"))
    except QCompileError as error:
        return error.message
    return None


def choose_backend(graph: Graph, log) -> str:
    """Resolve ``auto`` for ``graph`` (once: the choice is kept in its attributes); ``log`` hears why native."""
    if CHOSEN not in graph.attrs:
        refusal = stage_refusal(graph)
        graph.attrs[CHOSEN] = "gemmlowp" if refusal is None else "native"
        if refusal is not None:
            log(f"backend auto -> native: {refusal}")
    return graph.attrs[CHOSEN]
