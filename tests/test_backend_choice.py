"""convert{backend=auto}, the default: qcompile's kernels where the integer stage covers the model, torch's elsewhere."""

from __future__ import annotations

import torch
from torch import nn

from qcompile.data import open_data
from qcompile.frontend.loaders import load_model
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.pipeline import PassContext, run_pipeline
from tests.test_cli import qcompile


def _digit_cnn():
    loaded = load_model("zoo:digit_cnn")
    return loaded.module, lower(loaded.module, loaded.example_inputs)


def _records(graph, pipeline, data, messages):
    ctx = PassContext(calib_data=data, log=messages.append)
    return {r.pass_.name: r.result.stats for r in run_pipeline(graph, pipeline, ctx)}


def test_a_model_the_stage_covers_runs_on_qcompiles_kernels_with_full_grids():
    model, graph = _digit_cnn()
    data = open_data("builtin:mnist5k", limit=64, batch_size=32)
    messages: list[str] = []
    stats = _records(graph, "ptq", data, messages)
    assert stats["convert"]["backend auto -> gemmlowp"] == 1 and not messages
    assert graph.attrs["backend"] == "gemmlowp" and "equalized" in graph.facts
    convs = graph.find(op="conv2d")
    assert convs and all(n.target == "qcompile.kernels.modules.QConv2d" for n in convs)
    assert all(n.quant.observer.quant_range == (0, 255) for n in convs)  # the full grid, not torch's 7-bit one
    x = list(open_data("builtin:mnist5k", limit=96, batch_size=32))[2][0]  # 32 images calibration never saw
    with torch.no_grad():
        agree = (Interpreter(graph).run(x).argmax(1) == model(x).argmax(1)).float().mean()
    assert agree >= 0.95


class _NormAfterAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4).eval()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.head(self.bn(y + y))  # a norm after an add folds nowhere: the integer stage has no op for it


def test_a_model_the_stage_refuses_runs_on_torchs_engine_and_says_why():
    torch.manual_seed(0)
    model = _NormAfterAdd().eval()
    graph = lower(model, (torch.randn(1, 3, 8, 8),))
    messages: list[str] = []
    calib = [(torch.randn(4, 3, 8, 8),) for _ in range(2)]
    stats = _records(graph, "fuse,calibrate,convert", calib, messages)
    assert stats["convert"]["backend auto -> native"] == 1
    assert ("backend auto -> native: the integer stage (qcompile's kernels) does not cover these quantized ops: "
            "batch_norm2d (%bn)") in messages
    assert graph.attrs["backend"] == "native"
    conv = graph.node("conv")
    assert conv.target.startswith("torch.ao.nn.quantized") and conv.quant.observer.quant_range == (0, 127)
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        reference = model(x)
        error = (Interpreter(graph).run(x) - reference).pow(2).mean() / reference.pow(2).mean()
    assert float(error) < 1e-2


def test_outputs_only_one_backend_writes_settle_auto(tmp_path):
    exported = qcompile("zoo:digit_cnn", "--calib", "builtin:mnist5k", "--calib-samples", "64", "--deploy", "export",
                        "--no-verdict", "-o", tmp_path / "e")
    assert exported.returncode == 0, exported.stderr
    assert "backend auto -> gemmlowp" not in exported.stderr and "(torch.export; reloaded" in exported.stderr
    qoperator = qcompile("zoo:digit_cnn", "--passes", "ptq", "--calib", "builtin:mnist5k", "--calib-samples", "64",
                         "--export", "onnx", "--onnx-form", "qoperator", "--no-verdict", "-o", tmp_path / "q")
    assert qoperator.returncode == 0, qoperator.stderr
    assert "convert{backend=native}" in qoperator.stderr  # the expansion printed says which
