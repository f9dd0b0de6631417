"""Judging an ONNX export as a user would: against the float model, beside the emitted module.

``--check`` first compares the export's outputs with the emitted module's
code for code (:func:`qcompile.onnx.runtime.check.check_onnx`). Two int8
implementations round a few ties differently, and some models (MobileNetV2)
amplify one step at one element into many steps at the output, so that
comparison can fail for an export that is as good as the module. The
question a user has is whether the export is as close to the float model as
the module is. Per output, on the check data: the SQNR of each against the
float model, and for class scores (``[N, C]``) their top-1 agreement with it.

* The export is *as close* when its SQNR is at most :data:`SQNR_SLACK_DB`
  below the module's and its top-1 agreement no further below than
  sampling can explain: :data:`TOP1_SLACK`, or two standard errors of the
  module's agreement on that many samples where that is more (0.11 for 64
  samples at 0.72). Then the differences are rounding the model amplifies;
  the check passes and says so.
* Otherwise the export computes something else (a bug in the exporter or a
  kernel), and the check fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qcompile.diagnose.metrics import agreement, sqnr_db
from qcompile.onnx.runtime.check import concatenated_outputs
from qcompile.onnx.runtime.session import OnnxModel
from qcompile.output_check import flatten

SQNR_SLACK_DB = 1.0
TOP1_SLACK = 0.02


@dataclass(frozen=True)
class OutputVerdict:
    """One output of the export, the module and the float model, on the same data."""

    index: int
    module_sqnr: float
    export_sqnr: float
    module_top1: float | None  # agreement with the float model's top-1 (class scores only)
    export_top1: float | None
    samples: int

    @property
    def top1_slack(self) -> float:
        p = self.module_top1 or 0.0
        return max(TOP1_SLACK, 2 * math.sqrt(p * (1 - p) / max(self.samples, 1)))

    @property
    def as_close(self) -> bool:
        top1 = self.module_top1 is None or self.export_top1 >= self.module_top1 - self.top1_slack
        return self.export_sqnr >= self.module_sqnr - SQNR_SLACK_DB and top1

    def describe(self) -> str:
        text = (f"output {self.index}: SQNR against float {self.export_sqnr:.1f} dB for the export, "
                f"{self.module_sqnr:.1f} dB for the emitted module")
        if self.module_top1 is not None:
            text += (f"; top-1 agreement with float {self.export_top1:.3f} and {self.module_top1:.3f} on "
                     f"{self.samples} samples")
        return text


def judge(export_outputs, module_outputs, float_outputs) -> list[OutputVerdict]:
    """Per output, how close the export and the module each are to the float model."""
    exports, modules, floats = flatten(export_outputs), flatten(module_outputs), flatten(float_outputs)
    if not (len(exports) == len(modules) == len(floats)):
        raise ValueError(f"{len(exports)} export outputs, {len(modules)} module outputs, {len(floats)} float ones")
    return [OutputVerdict(i, sqnr_db(m, f), sqnr_db(e, f), agreement(m, f), agreement(e, f), len(f))
            for i, (e, m, f) in enumerate(zip(exports, modules, floats, strict=True))]


def against_float(reference, path, emitted, batches: list) -> list[OutputVerdict] | None:
    """Per output, the export at ``path`` (onnxruntime, optimizations on) and the emitted module, each against
    the float model ``reference`` on ``batches`` (tuples, one tensor per input); None without the float model."""
    if reference is None:
        return None
    with torch.no_grad():
        return judge(concatenated_outputs(OnnxModel(path, 1, True), batches),
                     concatenated_outputs(emitted, batches), concatenated_outputs(reference, batches))
