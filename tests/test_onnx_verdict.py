"""--check judges an export as a user would: against the float model, beside the emitted module."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch

from qcompile.onnx.runtime.verdict import judge


def test_an_export_as_close_to_float_as_the_module_passes_and_a_wrong_one_does_not():
    torch.manual_seed(0)
    floats = torch.randn(256, 10)
    module = floats + 0.1 * torch.randn(256, 10)  # the int8 model: close to float
    rounded = floats + 0.1 * torch.randn(256, 10)  # rounding elsewhere: as close, other elements
    (verdict,) = judge(rounded, module, floats)
    assert verdict.as_close and verdict.samples == 256
    assert abs(verdict.export_sqnr - verdict.module_sqnr) < 1.0
    (wrong,) = judge(torch.randn(256, 10), module, floats)  # computes something else
    assert not wrong.as_close and wrong.export_top1 < 0.3
    # several outputs are judged one by one: one wrong output fails the export
    verdicts = judge((rounded, torch.randn(256, 10)), (module, module), (floats, floats))
    assert len(verdicts) == 2 and verdicts[0].as_close and not verdicts[1].as_close


def test_top1_slack_follows_the_sample_count():
    floats = torch.randn(64, 10)
    (verdict,) = judge(floats, floats, floats)
    assert verdict.module_top1 == 1.0 and verdict.top1_slack == pytest.approx(0.02)  # no spread at 100%
    (feature_map,) = judge(torch.randn(4, 8, 3, 3), torch.randn(4, 8, 3, 3), torch.randn(4, 8, 3, 3))
    assert feature_map.module_top1 is None  # not class scores: SQNR alone


@pytest.mark.slow
def test_mobilenet_v2_export_passes_the_check_as_close_to_float(tmp_path):
    """Its codes differ from the module's by many steps (the model amplifies single rounding steps), but the
    export is as close to the float model as the module: the check says so and passes."""
    out = tmp_path / "out"
    run = subprocess.run([shutil.which("qcompile"), "zoo:mobilenet_v2", "--passes", "ptq", "--calib",
                          "builtin:photos", "--export", "onnx", "--check", "-o", str(out)],
                         capture_output=True, text=True, env=dict(os.environ), timeout=900)
    assert run.returncode == 0, run.stderr
    assert "as close to the float model as the module" in run.stderr and "not a wrong export" in run.stderr
    assert (out / "model.onnx").is_file()
