"""``--onnx-dynamic fused``: dynamically quantized LSTMs and linears as onnxruntime's fused kernels."""

from __future__ import annotations

import onnx
import pytest
import torch
from onnx import numpy_helper

from qcompile.codegen import load_model, write_model
from qcompile.errors import CheckFailed, QCompileError
from qcompile.frontend.lower import lower
from qcompile.onnx.export import export_onnx
from qcompile.onnx.fused_dynamic import seven_bit
from qcompile.onnx.runtime.check import FUSED_MIN_SQNR, check_onnx
from qcompile.onnx.runtime.session import OnnxModel
from qcompile.pipeline import run_pipeline
from tests.models import RowLSTM, fashion_rows, fit_on_fashion_rows
from tests.test_onnx import _Recurrent
from tests.torchao_reference import sqnr


def _ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _outputs(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


@pytest.fixture(scope="module")
def row_reader():
    """A RowLSTM reading rows, trained for three epochs on 12,000 Fashion-MNIST images, and 1,000 test images."""
    torch.manual_seed(0)
    model = fit_on_fashion_rows(RowLSTM(64), 12000, epochs=3)
    return (model, *fashion_rows("test", 1000))


def test_a_trained_lstm_classifier_keeps_its_accuracy_in_the_fused_kernels(row_reader, tmp_path):
    model, x, y = row_reader
    graph = lower(model, (x[:1],))
    run_pipeline(graph, "dynamic")
    write_model(graph, tmp_path / "model")
    emitted = load_model(tmp_path / "model")
    fused = export_onnx(graph, tmp_path / "fused.onnx", dynamic="fused")
    exact = export_onnx(graph, tmp_path / "exact.onnx")
    ops = _ops(fused)
    assert ops.count("DynamicQuantizeLSTM") == 1 and ops.count("DynamicQuantizeMatMul") == 1
    assert "Scan" not in ops and "MatMulInteger" not in ops
    assert "Scan" in _ops(exact)
    batches = [x[i:i + 250] for i in range(0, len(x), 250)]
    results = check_onnx(fused, emitted, batches, None, graph=graph)
    assert all(r.sqnr_db >= FUSED_MIN_SQNR for r in results)
    with torch.no_grad():
        accuracy = {name: float((f(x).argmax(1) == y).float().mean())
                    for name, f in [("float", model), ("int8", emitted), ("fused", OnnxModel(fused, 1))]}
    assert accuracy["float"] > 0.75  # trained: ten classes
    assert accuracy["fused"] >= accuracy["float"] - 0.01 and accuracy["int8"] >= accuracy["float"] - 0.01


@pytest.mark.parametrize("batch_first, bidirectional, layers", [(True, False, 1), (False, True, 2)])
def test_every_layer_and_direction_of_an_lstm_is_one_fused_kernel(batch_first, bidirectional, layers, tmp_path):
    torch.manual_seed(0)
    model = _Recurrent("lstm", batch_first, bidirectional, layers).eval()
    shape = (1, 7, 6) if batch_first else (7, 1, 6)
    graph = lower(model, (torch.randn(shape),))
    run_pipeline(graph, "dynamic")
    write_model(graph, tmp_path / "model")
    path = export_onnx(graph, tmp_path / "model.onnx", dynamic="fused")
    ops = _ops(path)
    assert ops.count("DynamicQuantizeLSTM") == layers and "Scan" not in ops
    batches = [2 * torch.randn(3, *shape[1:]) for _ in range(2)]  # another batch / sequence length than the example's
    check_onnx(path, load_model(tmp_path / "model"), batches, None, graph=graph)
    with torch.no_grad():  # the sequence and both final states, in torch's structure
        for got, want in zip(_outputs(OnnxModel(path, 1)(batches[0])), _outputs(model(batches[0])), strict=True):
            assert got.shape == want.shape and sqnr(got, want) > 30


def test_linears_are_quantized_from_their_float_weights_per_column_and_grus_stay_exact(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 24), torch.nn.ReLU(), torch.nn.Linear(24, 5)).eval()
    graph = lower(model, (torch.randn(1, 12),))
    run_pipeline(graph, "dynamic{per-channel=true}")
    path = export_onnx(graph, tmp_path / "linears.onnx", dynamic="fused")
    file = onnx.load(str(path))
    matmuls = [n for n in file.graph.node if n.op_type == "DynamicQuantizeMatMul"]
    initializers = {i.name: numpy_helper.to_array(i) for i in file.graph.initializer}
    assert [initializers[n.input[2]].shape for n in matmuls] == [(24,), (5,)]
    # quantized from the float weights dynamic kept, not from torch's 8-bit codes
    for matmul, layer in zip(matmuls, (model[0], model[2]), strict=True):
        codes, scales = seven_bit(layer.weight, per_row=True)
        assert (initializers[matmul.input[1]] == codes.numpy()).all()
        assert codes.min() >= -64 and codes.max() <= 63 and torch.equal(torch.from_numpy(initializers[matmul.input[2]]), scales)
    graph.node("v0").quant.float_weight = None  # a graph without them: torch's codes, rounded again
    again = onnx.load(str(export_onnx(graph, tmp_path / "again.onnx", dynamic="fused")))
    first = next(n for n in again.graph.node if n.op_type == "DynamicQuantizeMatMul")
    codes = numpy_helper.to_array(next(i for i in again.graph.initializer if i.name == first.input[1]))
    assert not (codes == initializers[matmuls[0].input[1]]).all()
    assert abs(codes.astype(int) - initializers[matmuls[0].input[1]].astype(int)).max() == 1

    gru = _Recurrent("gru", True, False, 1).eval()
    graph = lower(gru, (torch.randn(1, 7, 6),))
    run_pipeline(graph, "dynamic")
    ops = _ops(export_onnx(graph, tmp_path / "gru.onnx", dynamic="fused"))
    assert "Scan" in ops and "DynamicQuantizeLSTM" not in ops


def test_the_qoperator_form_takes_the_fused_kernels_too(tmp_path):
    from tests.test_onnx import Tagger

    torch.manual_seed(0)
    model = Tagger().eval()
    graph = lower(model, (torch.randn(1, 5, 8),))
    run_pipeline(graph, "dynamic")
    write_model(graph, tmp_path / "model")
    path = export_onnx(graph, tmp_path / "model.onnx", form="qoperator", dynamic="fused")
    assert {"DynamicQuantizeLSTM", "DynamicQuantizeMatMul"} <= set(_ops(path))
    results = check_onnx(path, load_model(tmp_path / "model"), [torch.randn(8, 5, 8)], None, graph=graph)
    assert all(r.sqnr_db >= FUSED_MIN_SQNR for r in results)


def test_the_check_fails_a_fused_file_with_its_gates_out_of_order(tmp_path):
    torch.manual_seed(0)
    model = _Recurrent("lstm", True, False, 1).eval()
    graph = lower(model, (torch.randn(1, 7, 6),))
    run_pipeline(graph, "dynamic")
    write_model(graph, tmp_path / "model")
    path = export_onnx(graph, tmp_path / "model.onnx", dynamic="fused")
    file = onnx.load(str(path))
    lstm = next(n for n in file.graph.node if n.op_type == "DynamicQuantizeLSTM")
    weight = next(i for i in file.graph.initializer if i.name == lstm.input[1])
    codes = numpy_helper.to_array(weight)  # [directions, input, 4 x hidden]: swap the input and output gates
    hidden = codes.shape[2] // 4
    swapped = codes.copy()
    swapped[..., :hidden], swapped[..., hidden:2 * hidden] = codes[..., hidden:2 * hidden], codes[..., :hidden]
    weight.CopyFrom(numpy_helper.from_array(swapped, weight.name))
    onnx.save(file, str(path))
    with pytest.raises(CheckFailed, match="fused dynamic kernels is .* dB from qcompile's dynamically quantized"):
        check_onnx(path, load_model(tmp_path / "model"), [torch.randn(4, 7, 6)], None, graph=graph)


def test_an_unknown_form_is_refused_before_anything_is_written(tmp_path):
    graph = lower(torch.nn.Linear(4, 2).eval(), (torch.randn(1, 4),))
    with pytest.raises(QCompileError, match="unknown form of dynamically quantized ops 'fast'"):
        export_onnx(graph, tmp_path / "model.onnx", dynamic="fast")
    assert not (tmp_path / "model.onnx").exists()


def test_the_cli_exports_and_checks_the_fused_form(tmp_path):
    from tests.test_cli import qcompile

    torch.manual_seed(0)
    torch.save(torch.randn(16, 5, 8), tmp_path / "sequences.pt")
    out = tmp_path / "out"
    run = qcompile("tests.test_onnx:Tagger", "--input-shape", "1,5,8", "--passes", "dynamic", "--export", "onnx",
                   "--onnx-dynamic", "fused", "--check", "--check-data", tmp_path / "sequences.pt", "-o", out)
    assert run.returncode == 0, run.stderr
    assert "| on | 16 |" in run.stdout and "SQNR dB" in run.stdout
    assert {"DynamicQuantizeLSTM", "DynamicQuantizeMatMul"} <= set(_ops(out / "model.onnx"))
    static = qcompile("tests.test_onnx:Tagger", "--input-shape", "1,5,8", "--passes", "fuse", "--export", "onnx",
                      "--onnx-dynamic", "fused", "-o", tmp_path / "float")
    assert static.returncode == 0, static.stderr
    assert "--onnx-dynamic fused changed nothing" in static.stderr
