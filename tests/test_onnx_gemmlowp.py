"""ONNX export of graphs lowered for the gemmlowp backend, from their plain integer tensors
(:mod:`qcompile.onnx.gemmlowp`): onnxruntime within one step of qcompile's own kernels."""

from __future__ import annotations

import onnx
import pytest
import torch

from qcompile.codegen import load_model as load_emitted
from qcompile.codegen import write_model
from qcompile.data import open_data
from qcompile.errors import QCompileError
from qcompile.frontend.loaders import load_model
from qcompile.frontend.lower import lower
from qcompile.onnx.export import export_onnx
from qcompile.onnx.runtime.check import check_onnx, concatenated_outputs, output_scales
from qcompile.onnx.runtime.layer_agreement import explain, layer_agreement
from qcompile.onnx.runtime.session import OnnxModel
from qcompile.onnx.runtime.verdict import judge
from qcompile.pipeline import PassContext, run_pipeline
from tests.test_cli import qcompile


def _digits(tmp_path, passes: str = "fuse,calibrate,convert{backend=gemmlowp}"):
    calib = open_data("builtin:mnist5k", limit=256, batch_size=64)
    graph = lower(load_model("zoo:digit_cnn").module, (torch.zeros(1, 1, 28, 28),))
    run_pipeline(graph, passes, PassContext(calib_data=calib))
    write_model(graph, tmp_path / "model")
    batches = [(b[0],) for b in open_data("builtin:mnist5k", limit=512, batch_size=128)]
    return graph, load_emitted(tmp_path / "model"), batches


def test_the_digit_cnn_exports_within_one_step_of_the_gemmlowp_kernels(tmp_path):
    graph, emitted, batches = _digits(tmp_path)
    assert graph.attrs["backend"] == "gemmlowp"
    assert not any(t.is_quantized for t in graph.params.values())  # plain tensors all the way
    path = export_onnx(graph, tmp_path / "model.onnx", narrow_convs="plain")
    model = onnx.load(path)
    assert sum(n.op_type == "DequantizeLinear" for n in model.graph.node) >= 2 * 5  # a weight and a bias per layer
    results = check_onnx(path, emitted, batches, output_scales(graph), graph=graph)
    assert [r.optimizations for r in results] == ["off", "on"]
    assert all(r.within_1_lsb >= 0.99 and r.top1_agreement >= 0.99 for r in results)


def test_qoperator_form_is_refused_for_gemmlowp_graphs(tmp_path):
    graph, _, _ = _digits(tmp_path)
    with pytest.raises(QCompileError, match="QDQ form only"):
        export_onnx(graph, tmp_path / "model.onnx", form="qoperator")
    assert not (tmp_path / "model.onnx").exists()


def test_four_bit_weights_export_as_int4_initializers(tmp_path):
    four, emitted4, batches = _digits(tmp_path, "fuse,calibrate,convert{backend=gemmlowp weight-bits=4}")
    path = export_onnx(four, tmp_path / "four.onnx", narrow_convs="plain")
    int4 = [i for i in onnx.load(path).graph.initializer if i.data_type == onnx.TensorProto.INT4]
    assert len(int4) == 2 * 5  # codes and zero points of each of the five layers
    assert all(r.within_1_lsb >= 0.99 for r in check_onnx(path, emitted4, batches, output_scales(four), graph=four))


def test_the_cli_exports_and_checks_a_gemmlowp_model(tmp_path):
    out = tmp_path / "out"
    run = qcompile("zoo:digit_cnn", "--passes", "ptq", "--backend", "gemmlowp", "--calib", "builtin:mnist5k",
                   "--calib-samples", "256", "--export", "onnx", "--check", "--no-verdict", "-o", out)
    assert run.returncode == 0, run.stderr
    assert (out / "model.onnx").exists() and "| on | " in run.stdout
    refused = qcompile("zoo:digit_cnn", "--passes", "ptq", "--backend", "gemmlowp", "--calib", "builtin:mnist5k",
                       "--export", "onnx", "--onnx-form", "qoperator", "-o", tmp_path / "q")
    assert refused.returncode == 2 and "QDQ form only" in refused.stderr and not (tmp_path / "q").exists()


@pytest.mark.slow
def test_mobilenet_v2_on_gemmlowp_exports_as_close_to_float_as_the_module(tmp_path):
    # real ImageNet weights on full 8-bit grids: onnxruntime's float requantization and the kernels' fixed point
    # round a few ties apart, which MobileNetV2 amplifies (as on the native backend); the layers agree
    model = load_model("zoo:mobilenet_v2").module
    calib, evaluation = open_data("builtin:photos", batch_size=16).interleaved_split()
    x = torch.cat([b[0] for b in evaluation])
    graph = lower(model, (x[:1],))
    run_pipeline(graph, "fuse,calibrate,convert{backend=gemmlowp}", PassContext(calib_data=calib))
    write_model(graph, tmp_path / "model")
    emitted = load_emitted(tmp_path / "model")
    path = export_onnx(graph, tmp_path / "model.onnx", narrow_convs="plain")
    rows = layer_agreement(path, graph, (x[:4],))
    assert len(rows) >= 60  # every quantized value is compared
    first = next(r for r in rows if r.differ > 0)
    assert first.max_steps == 1  # the first difference is one step: rounding
    finding = explain(rows)
    assert finding is None or not finding.wrong_layer
    batches = [(x[i:i + 16],) for i in range(0, len(x), 16)]
    with torch.no_grad():
        verdicts = judge(concatenated_outputs(OnnxModel(path, 1, True), batches),
                         concatenated_outputs(emitted, batches), concatenated_outputs(model, batches))
    assert all(v.as_close for v in verdicts), [v.describe() for v in verdicts]


def test_the_cli_builds_the_onnx_model_once(tmp_path, monkeypatch):
    # before OUT is written the model is built to refuse an unexportable graph early; the export reuses it
    import qcompile.onnx.export as export
    from qcompile.cli.main import main

    built = []
    original = export.build_onnx
    monkeypatch.setattr(export, "build_onnx", lambda *a, **k: built.append(1) or original(*a, **k))
    status = main(["zoo:digit_cnn", "--passes", "ptq", "--backend", "gemmlowp", "--calib", "builtin:mnist5k",
                   "--calib-samples", "64", "--export", "onnx", "--check", "--no-verdict", "-o", str(tmp_path / "o")])
    assert status == 0 and (tmp_path / "o" / "model.onnx").exists()
    assert len(built) == 1
