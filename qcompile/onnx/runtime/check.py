"""Cross-checking an exported ONNX model in onnxruntime against qcompile's own module.

Both run on the same data. For int8 models the error is counted in steps of
the output grid (LSBs): onnxruntime's integer kernels requantize with a float
multiplier and round their int32 bias once, torch's with their own rounding,
so a difference of one step on a few elements is expected; more is a bug.
The share of elements within one step must reach ``min_share`` (99%); an
output of fewer than 100 elements may still have one element beyond, since
there a single rounding tie carried two steps would fail the share on its own.
The check runs with onnxruntime's graph optimizations off (the QDQ graph as
written, evaluated in float) and on (fused into QLinearConv and friends).

A file exported with ``--onnx-dynamic fused`` is another int8 model than the
emitted one (onnxruntime's fused kernels round their own way,
:mod:`qcompile.onnx.fused_dynamic`): each output's SQNR against the emitted
model's must then reach ``FUSED_MIN_SQNR`` (20 dB). On the test models the
two are 30 to 41 dB apart, each 35 to 45 dB from float; a wrong gate order
or weight layout leaves a few dB.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from qcompile.diagnose.metrics import sqnr_db
from qcompile.errors import CheckFailed, QCompileError
from qcompile.onnx.fused_dynamic import uses_fused_kernels
from qcompile.onnx.runtime.layer_agreement import Finding, explain, layer_agreement
from qcompile.onnx.runtime.session import OnnxModel


@dataclass
class OnnxCheck:
    optimizations: str
    max_error: float
    max_error_lsb: float | None
    exact_share: float
    within_1_lsb: float | None
    top1_agreement: float
    samples: int
    beyond_1_lsb: int | None = None  # how many output elements are more than one step off (int8 models)
    elements: int = 0  # output elements compared
    sqnr_db: float = math.inf  # the lowest of the outputs' SQNR against the module's

    def row(self) -> str:
        lsb = "-" if self.max_error_lsb is None else f"{self.max_error_lsb:.0f}"
        within = "-" if self.within_1_lsb is None else f"{self.within_1_lsb:.4f}"
        top1 = "-" if math.isnan(self.top1_agreement) else f"{self.top1_agreement:.4f}"  # outputs not [N, classes]
        return (f"| {self.optimizations} | {self.samples} | {self.max_error:.3g} | {lsb} | {self.exact_share:.4f} "
                f"| {within} | {top1} | {self.sqnr_db:.1f} |")

    def top1_clause(self) -> str:
        """``, top-1 agreement 0.88`` for a classifier's [N, classes] output; nothing for other outputs."""
        return "" if math.isnan(self.top1_agreement) else f", top-1 agreement {self.top1_agreement:.2f}"


DYNAMIC_TOLERANCE = 1 / 128
FUSED_MIN_SQNR = 20.0  # dB, between a file with onnxruntime's fused dynamic kernels and the emitted model


def allowed_beyond(elements: int, min_share: float) -> int:
    """How many of ``elements`` may be more than one step off when ``min_share`` must be within one: the
    share's remainder, and at least one element when ``min_share`` is under 1 (an output under 100
    elements would otherwise fail on a single element at 99%)."""
    allowed = math.floor((1 - min_share) * elements + 1e-9)
    return max(allowed, 1) if min_share < 1 else allowed

HEADER = ("| ORT graph optimizations | samples | max abs error | max error (LSB) | exact | within 1 LSB "
          "| top-1 agreement | SQNR dB |\n|---|---|---|---|---|---|---|---|")


def run_onnxruntime(path: str | Path, batches: list, optimize: bool, threads: int = 1) -> torch.Tensor:
    """The model's (first) output over ``batches``, concatenated."""
    return concatenated_outputs(OnnxModel(path, threads, optimize), as_tuples(batches))[0]


def as_tuples(batches: list) -> list[tuple]:
    return [tuple(b) if isinstance(b, (tuple, list)) else (b,) for b in batches]


def concatenated_outputs(model, batches: list[tuple], tick: Callable[[], None] | None = None) -> list[torch.Tensor]:
    """Each output of ``model`` over all batches, as one float tensor per output (``tick()`` after each batch)."""
    results = []
    for batch in batches:
        out = model(*batch)
        if tick is not None:
            tick()
        out = tuple(out.values()) if isinstance(out, dict) else out  # a dict's values, in the file's order
        results.append(tuple(out) if isinstance(out, (tuple, list)) else (out,))
    return [torch.cat([r[i].float() for r in results]) for i in range(len(results[0]))]


def check_onnx(path: str | Path, module: torch.nn.Module, batches: list,
               output_scale: float | list[float | None] | None, min_share: float = 0.99,
               graph=None, progress: Callable[[str, int, int | None], None] | None = None) -> list[OnnxCheck]:
    """Compare onnxruntime (optimizations off and on) with ``module`` on ``batches``.

    Each batch is a tensor, or a tuple with one tensor per model input.
    ``output_scale`` is the output grid's step, or one per output for a model
    that returns several (None for a float output; see :func:`output_scales`).
    Shares and maxima are over the elements of every output; top-1 agreement
    is the first output's.

    ``graph`` (the converted graph ``module`` was emitted from) lets a failure
    say whether the model amplifies one-step rounding differences
    (:func:`qcompile.diagnose.amplification.one_step_reach`).

    Raises:
        QCompileError: if fewer than ``min_share`` of the output elements are
            within one LSB (int8 models; at least one element may be beyond,
            see :func:`allowed_beyond`), the error exceeds 1/128 of the
            largest output or top-1 agreement is under ``min_share``
            (dynamically quantized models, and int8 models whose outputs are
            float, such as a softmax after the last dequantize; both need
            ``graph``), or the relative error exceeds 1e-4 (float models).
    """
    batches = as_tuples(batches)
    done = [0]

    def tick() -> None:  # the module, then onnxruntime without and with optimizations: three runs of the batches
        done[0] += 1
        if progress is not None:
            progress("onnx check", done[0], 3 * len(batches))

    with torch.no_grad():
        wants = concatenated_outputs(module, batches, tick)
    scales = list(output_scale) if isinstance(output_scale, (list, tuple)) else [output_scale] * len(wants)
    quantized = all(scales)
    dynamic = graph is not None and is_dynamic(graph)
    fused = dynamic and uses_fused_kernels(onnx.load(str(path)))
    results = []
    for optimize in (False, True):
        gots = concatenated_outputs(OnnxModel(path, 1, optimize), batches, tick)
        errors = [(got - want).abs() for got, want in zip(gots, wants, strict=True)]
        if quantized:
            steps = torch.cat([torch.round(e / s).flatten() for e, s in zip(errors, scales, strict=True)])
            lsb, exact, within = float(steps.max()), float((steps == 0).float().mean()), float((steps <= 1).float().mean())
            beyond, elements = int((steps > 1).sum()), steps.numel()
        else:
            lsb, within, beyond = None, None, None
            exact = float(torch.cat([(e == 0).flatten() for e in errors]).float().mean())
            elements = sum(e.numel() for e in errors)
        got, want = gots[0], wants[0]
        agree = float((got.argmax(1) == want.argmax(1)).float().mean()) if want.dim() == 2 else float("nan")
        results.append(OnnxCheck("on" if optimize else "off", max(float(e.max()) for e in errors), lsb, exact,
                                 within, agree, len(want), beyond, elements,
                                 min(sqnr_db(g, w) for g, w in zip(gots, wants, strict=True))))
    largest = max(float(w.abs().max()) for w in wants)
    for r in results:
        if quantized and r.beyond_1_lsb > allowed_beyond(r.elements, min_share):
            layers = [] if graph is None else layer_agreement(path, graph, batches[0], r.optimizations == "on")
            raise CheckFailed(
                f"onnxruntime (optimizations {r.optimizations}) disagrees with qcompile's model: only "
                f"{100 * r.within_1_lsb:.2f}% of {r.elements} output elements within 1 LSB (max {r.max_error_lsb:.0f} LSB"
                f"{r.top1_clause()})",
                hint=_explain(graph if len(batches[0]) == 1 else None, batches[0][0], r.top1_agreement,
                              explain(layers, min_share)))
        if fused:
            if r.sqnr_db < FUSED_MIN_SQNR:
                raise CheckFailed(
                    f"onnxruntime (optimizations {r.optimizations}) with its fused dynamic kernels is {r.sqnr_db:.1f} dB "
                    f"from qcompile's dynamically quantized model (at least {FUSED_MIN_SQNR:.0f} dB expected: the "
                    "two round differently, but each stays within about 35 dB of float)",
                    hint="a bug in the exporter or a kernel; please report it with the model")
        elif dynamic or (graph is not None and "converted" in graph.facts and not quantized):
            # Both runtimes put each dynamic linear's input on a 7-bit grid measured on
            # it, but compute the codes in their own float arithmetic: a code at a
            # rounding tie can come out one step apart, and the error travels on. So
            # does a one-step difference of an int8 model's codes through the float
            # ops after its last dequantize (a softmax over int8 logits).
            bound = DYNAMIC_TOLERANCE * largest
            if r.max_error > bound or (wants[0].dim() == 2 and r.top1_agreement < min_share):
                what = "dynamically quantized model" if dynamic else "int8 model (float outputs)"
                raise CheckFailed(
                    f"onnxruntime (optimizations {r.optimizations}) disagrees with qcompile's {what}: max error "
                    f"{r.max_error:.3g} (allowed {bound:.3g}, 1/128 of the largest output){r.top1_clause()}",
                    hint="a bug in the exporter or a kernel; please report it with the model")
        elif not quantized and r.max_error > 1e-4 * max(largest, 1.0):
            raise CheckFailed(f"onnxruntime's float result differs by {r.max_error:.3g}")
    return results


def _explain(graph, x: torch.Tensor, top1_agreement: float, by_layer: Finding | None = None) -> str:
    """The hint of a failed check: the layer-by-layer comparison's finding where it has one (``by_layer``,
    from :func:`qcompile.onnx.runtime.layer_agreement.explain`), else what one step of rounding does to the output."""
    bug = "a bug in the exporter or a kernel; please report it with the model"
    if by_layer is not None and by_layer.wrong_layer:
        return by_layer.text
    if by_layer is not None:
        if top1_agreement < 0.5:
            return f"{by_layer.text}; but a top-1 agreement of {top1_agreement:.2f} is more than that: {bug}"
        if math.isnan(top1_agreement):  # feature maps, not a classifier's scores
            return f"{by_layer.text}; judge the export by its outputs' SQNR against the float model"
        return f"{by_layer.text}; judge the export by the top-1 agreement"
    if graph is None:
        return f"unless the model amplifies one-step rounding differences (see the README's ONNX section), {bug}"
    from qcompile.diagnose.amplification import one_step_reach

    try:
        reach = one_step_reach(graph, x)
    except QCompileError:  # not one dequantized output: nothing to measure
        return _explain(None, x, top1_agreement)
    if reach.moved < 0.01:
        return f"{reach.describe()}, so rounding differences do not explain this: {bug}"
    amplifies = (f"{reach.describe()}: this model amplifies the rare one-step rounding differences between torch's "
                 "and onnxruntime's int8 kernels, so its outputs cannot agree within 1 LSB end to end")
    if top1_agreement < 0.5:
        return f"{amplifies}; but a top-1 agreement of {top1_agreement:.2f} is more than that: {bug}"
    return f"{amplifies}; judge the export by the top-1 agreement"


def is_dynamic(graph) -> bool:
    """Whether any op of ``graph`` quantizes its input at run time (the ``dynamic`` pass; its int8
    embedding tables read integer ids and do not)."""
    return any(node.quant.mode == "dynamic" and node.op not in ("embedding", "embedding_bag") for node in graph.nodes())


def output_scales(graph) -> list[float | None]:
    """The grid step of each value a converted graph returns (None for a float output)."""
    from qcompile.onnx.outputs import output_values

    scales = []
    for value in output_values(graph):
        qparams = graph.inputs(value)[0].quant.qparams if value.op == "dequantize" else None
        scales.append(float(qparams.scale) if qparams is not None else None)
    return scales


def output_scale(graph) -> float | None:
    """The output grid's step of a converted graph with one output (None for float outputs)."""
    scales = output_scales(graph)
    return scales[0] if len(scales) == 1 else None
