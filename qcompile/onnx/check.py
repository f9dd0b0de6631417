"""Cross-checking an exported ONNX model in onnxruntime against qcompile's own module.

Both run on the same data. For int8 models the error is counted in steps of
the output grid (LSBs): onnxruntime's integer kernels requantize with a float
multiplier and round their int32 bias once, torch's with their own rounding,
so a difference of one step on a few elements is expected; more is a bug.
The check runs with onnxruntime's graph optimizations off (the QDQ graph as
written, evaluated in float) and on (fused into QLinearConv and friends).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from qcompile.errors import CheckFailed, QCompileError
from qcompile.onnx.session import OnnxModel


@dataclass
class OnnxCheck:
    optimizations: str
    max_error: float
    max_error_lsb: float | None
    exact_share: float
    within_1_lsb: float | None
    top1_agreement: float
    samples: int

    def row(self) -> str:
        lsb = "-" if self.max_error_lsb is None else f"{self.max_error_lsb:.0f}"
        within = "-" if self.within_1_lsb is None else f"{self.within_1_lsb:.4f}"
        return (f"| {self.optimizations} | {self.samples} | {self.max_error:.3g} | {lsb} | {self.exact_share:.4f} "
                f"| {within} | {self.top1_agreement:.4f} |")


DYNAMIC_TOLERANCE = 1 / 128

HEADER = ("| ORT graph optimizations | samples | max abs error | max error (LSB) | exact | within 1 LSB "
          "| top-1 agreement |\n|---|---|---|---|---|---|---|")


def run_onnxruntime(path: str | Path, batches: list[torch.Tensor], optimize: bool, threads: int = 1) -> torch.Tensor:
    model = OnnxModel(path, threads, optimize)
    return torch.cat([model(x) for x in batches])


def check_onnx(path: str | Path, module: torch.nn.Module, batches: list[torch.Tensor],
               output_scale: float | None, min_share: float = 0.99, graph=None) -> list[OnnxCheck]:
    """Compare onnxruntime (optimizations off and on) with ``module`` on ``batches``.

    ``graph`` (the converted graph ``module`` was emitted from) lets a failure
    say whether the model amplifies one-step rounding differences
    (:func:`qcompile.diagnose.amplification.one_step_reach`).

    Raises:
        QCompileError: if fewer than ``min_share`` of the output elements are
            within one LSB (int8 models), the error exceeds 1/128 of the
            largest output or top-1 agreement is under ``min_share``
            (dynamically quantized models, which need ``graph``), or the
            relative error exceeds 1e-4 (float models).
    """
    with torch.no_grad():
        want = torch.cat([module(x).float() for x in batches])
    results = []
    for optimize in (False, True):
        got = run_onnxruntime(path, batches, optimize)
        error = (got - want).abs()
        if output_scale:
            steps = torch.round(error / output_scale)
            lsb, exact, within = float(steps.max()), float((steps == 0).float().mean()), float((steps <= 1).float().mean())
        else:
            lsb, exact, within = None, float((error == 0).float().mean()), None
        agree = float((got.argmax(1) == want.argmax(1)).float().mean()) if want.dim() == 2 else float("nan")
        results.append(OnnxCheck("on" if optimize else "off", float(error.max()), lsb, exact, within, agree,
                                 len(want)))
    for r in results:
        if output_scale and r.within_1_lsb < min_share:
            raise CheckFailed(
                f"onnxruntime (optimizations {r.optimizations}) disagrees with qcompile's model: only "
                f"{100 * r.within_1_lsb:.2f}% of output elements within 1 LSB (max {r.max_error_lsb:.0f} LSB, "
                f"top-1 agreement {r.top1_agreement:.2f})",
                hint=_explain(graph, batches[0], r.top1_agreement))
        if graph is not None and is_dynamic(graph):
            # Both runtimes put each dynamic linear's input on a 7-bit grid measured on
            # it, but compute the codes in their own float arithmetic: a code at a
            # rounding tie can come out one step apart, and the error travels on.
            bound = DYNAMIC_TOLERANCE * float(want.abs().max())
            if r.max_error > bound or (want.dim() == 2 and r.top1_agreement < min_share):
                raise CheckFailed(
                    f"onnxruntime (optimizations {r.optimizations}) disagrees with qcompile's dynamically "
                    f"quantized model: max error {r.max_error:.3g} (allowed {bound:.3g}, 1/128 of the largest "
                    f"output), top-1 agreement {r.top1_agreement:.2f}",
                    hint="a bug in the exporter or a kernel; please report it with the model")
        elif not output_scale and r.max_error > 1e-4 * max(float(want.abs().max()), 1.0):
            raise CheckFailed(f"onnxruntime's float result differs by {r.max_error:.3g}")
    return results


def _explain(graph, x: torch.Tensor, top1_agreement: float) -> str:
    bug = "a bug in the exporter or a kernel; please report it with the model"
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
    """Whether any op of ``graph`` quantizes its input at run time (the ``dynamic`` pass)."""
    return any(node.quant.mode == "dynamic" for node in graph.nodes())


def output_scale(graph) -> float | None:
    """The output grid's step of a converted graph (None for float outputs)."""
    result = graph.inputs(graph.output_node)
    if result and result[0].op == "dequantize":
        qparams = graph.inputs(result[0])[0].quant.qparams
        return float(qparams.scale) if qparams is not None else None
    return None
