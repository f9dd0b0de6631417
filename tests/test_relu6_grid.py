"""convert's full ReLU6 grids: no clamp after the layer, and 7-bit weights where a dense layer reads the codes."""

from __future__ import annotations

import pytest
import torch

import qcompile.quant.relu6_grid as relu6_grid
from qcompile.codegen import load_model, write_model
from qcompile.cpu_features import has_vnni
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.onnx.export import export_onnx
from qcompile.onnx.runtime.check import check_onnx, output_scale
from qcompile.pipeline import PassContext, run_pipeline
from qcompile.quant.clamps import clamp_after
from qcompile.quant.config import QuantConfig
from qcompile.training import trainable, write_back
from tests.pipelines import NATIVE_PTQ


class _SaturatingReLU6(torch.nn.Module):
    """A conv + ReLU6 that often reaches 6, read by a depthwise conv + ReLU6 and by a dense 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.wide = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.act = torch.nn.ReLU6()
        self.depthwise = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.act2 = torch.nn.ReLU6()
        self.dense = torch.nn.Conv2d(16, 8, 1)
        with torch.no_grad():
            self.wide.weight.mul_(20)

    def forward(self, x):
        y = self.act(self.wide(x))
        return torch.cat([self.act2(self.depthwise(y)), self.dense(y)], 1).flatten(1)


def _convert(grid: str, preset: str = "x86", before: str = ""):
    torch.manual_seed(0)
    model = _SaturatingReLU6().eval()
    calib = [(torch.randn(8, 3, 10, 10) * 3,) for _ in range(2)]
    graph = lower(model, (calib[0][0][:1],))
    records = run_pipeline(graph, f"fuse,calibrate,{before}convert{{backend=native relu6-grid={grid}}}",
                           PassContext(calib_data=calib, quant_config=QuantConfig.from_preset(preset)))
    return graph, records, calib


def test_full_grid_replaces_the_clamp_and_changes_no_code():
    observed, _, _ = _convert("observed")
    assert len(observed.find(op="relu6")) == 2  # the observed grids need their clamps
    graph, records, _ = _convert("full")
    assert not graph.find(op="relu6")
    for name in ("wide", "depthwise"):
        q = graph.node(name).quant.qparams
        assert int(q.zero_point) == 0 and (q.quant_min, q.quant_max) == (0, 255)
        assert relu6_grid.relu6_top_code(q) == 255 and float(q.scale) * 255 == pytest.approx(6.0)
    assert records[-1].result.stats["relu6 grids widened"] == 2
    clamped = graph.copy()
    for name in ("wide", "depthwise"):
        clamp_after(clamped, clamped.node(name), 0.0, 6.0, "relu6")
    x = torch.randn(4, 3, 10, 10) * 100  # far past calibration: the wide conv saturates at 255 and at 0
    codes = {}
    with torch.no_grad():
        out = Interpreter(graph).run(x, hook=lambda n, v: codes.__setitem__(n.name, v))
        assert torch.equal(out, Interpreter(clamped).run(x))
    assert int(codes["wide"].int_repr().max()) == 255


def test_readers_of_full_grids_get_7_bit_weights():
    graph, records, _ = _convert("full")
    for name in ("dense", "depthwise"):
        codes = graph.param(graph.node(name), "weight").int_repr()
        assert int(codes.min()) >= -64 and int(codes.max()) <= 63 and int(codes.abs().max()) >= 63, name
    assert records[-1].result.stats["7-bit weights for wide inputs"] == 2
    observed, _, _ = _convert("observed")
    assert int(observed.param(observed.node("dense"), "weight").int_repr().abs().max()) == 127


def test_per_tensor_weights_keep_8_bits_and_the_clamp():
    """One bit fewer costs per-tensor weights too much (the default preset): a grid they read stays observed;
    the one only a concatenation reads is widened all the same."""
    graph, records, _ = _convert("full", preset="default")
    observed, _, _ = _convert("observed", preset="default")
    assert [n.name for n in observed.find(op="relu6")] == ["wide_relu6", "depthwise_relu6"]
    assert [n.name for n in graph.find(op="relu6")] == ["wide_relu6"]
    assert records[-1].result.stats["relu6 grids widened"] == 1
    assert records[-1].result.stats["7-bit weights for wide inputs"] == 0
    assert int(graph.param(graph.node("dense"), "weight").int_repr().abs().max()) == 127


@pytest.mark.parametrize("before", ["aciq,", "aciq{bits=4},"])
def test_analytic_clips_and_sub_8_bit_grids_stay(before):
    graph, records, _ = _convert("full", before=before)
    assert "relu6 grids widened" not in records[-1].result.stats
    assert int(graph.param(graph.node("dense"), "weight").int_repr().abs().max()) == 127


def test_after_qat_the_learned_grids_and_weights_stay():
    torch.manual_seed(0)
    graph = lower(_SaturatingReLU6().eval(), (torch.randn(1, 3, 10, 10),))
    run_pipeline(graph, "qat")
    module, param_map = trainable(graph)
    module.train()
    with torch.no_grad():
        for _ in range(3):  # the fake-quant ranges learn from forward passes
            module(torch.randn(8, 3, 10, 10) * 3)
    write_back(graph, module, param_map)
    records = run_pipeline(graph, "qat-finalize,convert{backend=native}")
    assert "relu6 grids widened" not in records[-1].result.stats and graph.find(op="relu6")
    assert int(graph.param(graph.node("dense"), "weight").int_repr().abs().max()) == 127


@pytest.mark.parametrize("bits, exact", [(7, True), (8, has_vnni())])
def test_7_bit_weights_keep_the_kernels_exact_on_full_grids(bits, exact, monkeypatch, tmp_path):
    """With codes up to 255, 8-bit weights let int16 pair sums saturate on x86 without VNNI (torch's depthwise
    kernels, onnxruntime's dense ones); 7-bit weights cannot. On such a CPU the 8-bit case shows this check can
    fail; with VNNI the products are summed in int32 and 8-bit weights are exact too."""
    monkeypatch.setattr(relu6_grid, "WIDE_INPUT_WEIGHT_BITS", bits)
    graph, _, calib = _convert("full")
    write_model(graph, tmp_path / "model")
    path = export_onnx(graph, tmp_path / "model" / "model.onnx")
    batches = [b[0] for b in calib]
    results = check_onnx(path, load_model(tmp_path / "model"), batches, output_scale(graph), min_share=0.0)
    # optimizations off: onnxruntime's float reference; on: its int8 kernels; both against torch's int8 kernels
    assert all((r.within_1_lsb >= 0.999) == exact for r in results), results


@pytest.mark.slow
def test_mobilenet_v2_exports_without_clamps(tmp_path):
    """The real MobileNetV2 (x86 preset) exports with no Clip left: onnxruntime's own quantize_static model
    has none either, and the clamps were what made qcompile's export slower than it."""
    import onnx

    from qcompile.data import open_data
    from qcompile.frontend.loaders import load_model as load_user_model

    model = load_user_model("zoo:mobilenet_v2").module
    calib = list(open_data("builtin:photos", batch_size=16, limit=64))
    graph = lower(model, (calib[0][0][:1],))
    records = run_pipeline(graph, NATIVE_PTQ, PassContext(calib_data=calib, quant_config=QuantConfig.from_preset("x86")))
    stats = records[-1].result.stats
    assert stats["relu6 grids widened"] >= 1 and stats["7-bit weights for wide inputs"] >= stats["relu6 grids widened"]
    ops = [n.op_type for n in onnx.load(str(export_onnx(graph, tmp_path / "model.onnx"))).graph.node]
    assert "Clip" not in ops and ops.count("Conv") == 52
