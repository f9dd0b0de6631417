"""ONNX export from the IR, checked in onnxruntime against qcompile's own models."""

from __future__ import annotations

import functools
import re
import tempfile
from pathlib import Path

import onnx
import pytest
import torch
import torchvision

from qcompile.codegen import load_model, write_model
from qcompile.data import open_data
from qcompile.errors import CheckFailed, QCompileError
from qcompile.frontend.loaders import load_model as load_user_model
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.ir import NodeKind
from qcompile.onnx.export import export_onnx
from qcompile.onnx.runtime.check import check_onnx, output_scale
from qcompile.pipeline import PassContext, run_pipeline
from tests.models import (
    AttentionBlock,
    PatchTransformer,
    RecurrentStates,
    TwoInputsTwoHeads,
    randomize_batch_norm,
)
from tests.pipelines import NATIVE_PTQ
from tests.seed_models import FashionNet
from tests.torchao_reference import sqnr


def _export(graph, tmp_path):
    write_model(graph, tmp_path / "model")
    path = export_onnx(graph, tmp_path / "model" / "model.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return path, load_model(tmp_path / "model")


def test_float_graph_exports_exactly(tmp_path):
    model = randomize_batch_norm(torchvision.models.resnet18())
    x = torch.randn(2, 3, 64, 64)
    graph = lower(model, (x,))
    run_pipeline(graph, "fuse")
    path, emitted = _export(graph, tmp_path)
    results = check_onnx(path, emitted, [x, torch.randn(3, 3, 64, 64)], None)
    assert all(r.max_error < 1e-4 and r.top1_agreement == 1.0 for r in results)


def _check_int8(model, calib, tmp_path):
    graph = lower(model, (calib[0][:1],))
    run_pipeline(graph, "ptq", PassContext(calib_data=[(b,) for b in calib]))
    path, emitted = _export(graph, tmp_path)
    model_proto = onnx.load(str(path))
    ops = {n.op_type for n in model_proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8 = [i for i in model_proto.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert int8, "weights are stored as int8"
    return check_onnx(path, emitted, calib, output_scale(graph))


def test_seed003_network_int8_agrees_within_one_lsb(tmp_path):
    data = open_data("builtin:fashion-test", limit=256, batch_size=64)
    calib = [b[0] for b in data]
    results = _check_int8(FashionNet().eval(), calib, tmp_path)
    for r in results:
        assert r.within_1_lsb >= 0.99 and r.top1_agreement >= 0.99


@pytest.mark.slow
def test_resnet18_int8_agrees_within_one_lsb(tmp_path):
    model = randomize_batch_norm(torchvision.models.resnet18())
    calib = [b[0] for b in open_data("builtin:photos", batch_size=16, limit=48)]
    for r in _check_int8(model, calib, tmp_path):
        assert r.within_1_lsb >= 0.99, r


@functools.cache
def _mobilenet_v2_export():
    """Shared by the tests below (one calibration and export), in a folder that lives as long as the run."""
    folder = Path(tempfile.mkdtemp(prefix="qcompile-mobilenet-v2-"))
    model = load_user_model("zoo:mobilenet_v2").module
    calib = [b[0] for b in open_data("builtin:photos", batch_size=16, limit=48)]
    graph = lower(model, (calib[0][:1],))
    run_pipeline(graph, "ptq", PassContext(calib_data=[(b,) for b in calib]))
    path, emitted = _export(graph, folder)
    return graph, path, emitted, calib


@pytest.mark.slow
def test_mobilenet_v2_int8_one_lsb_per_layer_compounds():
    """torch's int8 kernels and onnxruntime round differently on rare elements (one step
    per layer); MobileNetV2 amplifies single steps (one at one element of its first conv
    moves a third of that image's logits by more than 1 LSB). When the check fails, its
    hint says so and names the layer where the codes first part: one of the first (the input's
    quantize or the first conv, depending on where the calibrated grid puts a tie)."""
    graph, path, emitted, calib = _mobilenet_v2_export()
    results = check_onnx(path, emitted, calib, output_scale(graph), min_share=0.0)
    assert all(r.top1_agreement >= 0.7 for r in results)
    try:
        check_onnx(path, emitted, calib, output_scale(graph), graph=graph)
    except CheckFailed as failed:
        assert "this model amplifies" in failed.hint
        first = re.search(r"agree exactly up to %(\w+)", failed.hint).group(1)
        early = [n.name for n in graph.nodes()][:[n.name for n in graph.nodes()].index("features_1_conv_0_0")]
        assert first in early, (first, early)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="target: 99% of MobileNetV2's outputs within 1 LSB of the emitted module in "
                   "onnxruntime; measured 45% (top-1 agreement 0.81), rounding differences the model amplifies")
def test_mobilenet_v2_int8_export_within_one_lsb():
    graph, path, emitted, calib = _mobilenet_v2_export()
    check_onnx(path, emitted, calib, output_scale(graph), graph=graph)  # raises CheckFailed below 99%


def test_digit_cnn_shape_arithmetic_exports(tmp_path):
    model = load_user_model("zoo:digit_cnn").module
    batches = [b[0] for b in open_data("builtin:mnist5k", limit=128, batch_size=64)]
    results = _check_int8(model, batches, tmp_path)  # x.view(x.size(0), -1): Shape, Gather, Concat, Reshape
    assert all(r.top1_agreement >= 0.98 for r in results)


def test_check_fails_loudly_on_a_wrong_model(tmp_path):
    data = [b[0] for b in open_data("builtin:fashion-test", limit=128, batch_size=64)]
    graph = lower(FashionNet().eval(), (data[0][:1],))
    run_pipeline(graph, "ptq", PassContext(calib_data=[(b,) for b in data]))
    path, emitted = _export(graph, tmp_path)
    other = FashionNet().eval()  # different weights: the numbers must not pass
    with pytest.raises(CheckFailed, match="within 1 LSB") as failed:
        check_onnx(path, other, data, output_scale(graph), graph=graph)
    # this network keeps one-step differences local, so the check calls the disagreement a bug
    assert "rounding differences do not explain this" in failed.value.hint


@pytest.mark.parametrize("model_name", ["fashion", "resnet18"])
def test_qoperator_form(model_name, tmp_path):
    if model_name == "fashion":
        model = FashionNet().eval()
        data = [b[0] for b in open_data("builtin:fashion-test", limit=128, batch_size=64)]
    else:
        model = randomize_batch_norm(torchvision.models.resnet18())
        data = [b[0] for b in open_data("builtin:photos", limit=32, batch_size=16)]
    graph = lower(model, (data[0][:1],))
    run_pipeline(graph, NATIVE_PTQ, PassContext(calib_data=[(b,) for b in data]))
    write_model(graph, tmp_path / "m")
    path = export_onnx(graph, tmp_path / "m" / "model.onnx", form="qoperator")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "QLinearConv" in ops and "Conv" not in ops
    if model_name == "resnet18":
        assert {"QLinearAdd", "QLinearGlobalAveragePool"} <= ops
    for r in check_onnx(path, load_model(tmp_path / "m"), data, output_scale(graph)):
        assert r.within_1_lsb >= 0.99
        if model_name == "fashion":  # random ResNet-18 logits are near ties: top-1 says little there
            assert r.top1_agreement >= 0.98


def test_fake_quant_graph_exports_as_qdq(tmp_path):
    from qcompile.interpreter import Interpreter
    from qcompile.nn.qat import _affine_qparams
    from qcompile.onnx.runtime.check import run_onnxruntime

    graph = lower(FashionNet(), (torch.randn(1, 1, 28, 28),))
    run_pipeline(graph, "qat,train", PassContext(train_data=open_data("builtin:fashion-train", limit=640,
                                                                      batch_size=64)))
    path = export_onnx(graph, tmp_path / "qat.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") == 5  # activations; weights are stored already fake-quantized
    assert "Clip" not in ops
    x = next(iter(open_data("builtin:fashion-test", limit=64)))[0]
    got, want = run_onnxruntime(path, [x], optimize=False), Interpreter(graph).run(x)
    last = graph.inputs(graph.output_node)[0]
    assert last.op == "fake_quantize"
    step, _ = _affine_qparams(graph.param(last, "min_val"), graph.param(last, "max_val"), 0, 127, False)
    # both saturate at the dtype's limits, above the 7-bit grids' top, so no value is a step apart
    assert float((got - want).abs().max()) < 0.5 * float(step)
    assert float((got.argmax(1) == want.argmax(1)).float().mean()) >= 0.95


def test_four_bit_weights_export_as_int4(tmp_path):
    model = load_user_model("zoo:digit_cnn").module
    batches = [b[0] for b in open_data("builtin:mnist5k", limit=128, batch_size=64)]
    sizes = {}
    for bits in (8, 4):
        graph = lower(model, (batches[0][:1],))
        run_pipeline(graph, f"fuse,calibrate,convert{{weight-bits={bits}}}", PassContext(calib_data=[(b,) for b in batches]))
        path, emitted = _export(graph, tmp_path / str(bits))
        types = {i.data_type for i in onnx.load(str(path)).graph.initializer}
        assert (onnx.TensorProto.INT4 in types) == (bits == 4)
        for r in check_onnx(path, emitted, batches, output_scale(graph)):  # onnxruntime runs the INT4 weights
            assert r.within_1_lsb >= 0.99 and r.top1_agreement >= 0.98, r
        sizes[bits] = path.stat().st_size
    assert sizes[4] < 0.6 * sizes[8]  # measured: 210 kB against 405 kB (1.56 MB in float)


class _TwoReLU6(torch.nn.Module):
    """A ReLU6 whose 7-bit grid reaches past 6 (so the clamp binds) and one whose grid stays below 6."""

    def __init__(self):
        super().__init__()
        self.wide = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.narrow = torch.nn.Conv2d(8, 4, 1)
        self.act1, self.act2 = torch.nn.ReLU6(), torch.nn.ReLU6()
        with torch.no_grad():
            self.wide.weight.mul_(20)
            self.narrow.weight.mul_(0.05)

    def forward(self, x):
        return self.act2(self.narrow(self.act1(self.wide(x)))).flatten(1)


@pytest.mark.parametrize("form", ["qdq", "qoperator"])
def test_relu6_clamps_the_integer_codes(form, tmp_path):
    """On observed grids, ReLU6 exports as a Clip of the uint8 codes (no float Clip for the runtime to fuse), or not at all when
    its grid cannot hold values above 6; onnxruntime agrees with the emitted model within 1 LSB everywhere."""
    torch.manual_seed(0)
    calib = [torch.randn(8, 3, 12, 12) for _ in range(2)]
    graph = lower(_TwoReLU6().eval(), (calib[0][:1],))
    run_pipeline(graph, "fuse,calibrate,convert{backend=native relu6-grid=observed}", PassContext(calib_data=[(b,) for b in calib]))
    write_model(graph, tmp_path / "model")
    path = export_onnx(graph, tmp_path / "model" / "model.onnx", form=form)
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in [*proto.graph.value_info, *proto.graph.input]}
    clips = [n for n in proto.graph.node if n.op_type == "Clip"]
    assert len(clips) == 1 and types[clips[0].input[0]] == onnx.TensorProto.UINT8  # only the binding one
    bounds = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    assert (int(bounds[clips[0].input[1]]), int(bounds[clips[0].input[2]])) == (0, 127)  # 6 on the 6/127 grid
    results = check_onnx(path, load_model(tmp_path / "model"), calib, output_scale(graph), graph=graph)
    assert all(r.within_1_lsb == 1.0 and r.exact_share > 0.99 for r in results), results


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "efficientnet_b0"])
def test_channel_shuffle_silu_and_stochastic_depth_export(tmp_path, name):
    """ShuffleNetV2's chunk / channels // groups view, EfficientNet's SiLU (float, between Dequantize and
    QuantizeLinear) and its stochastic depth (identity in eval mode), int8, in both forms."""
    torch.manual_seed(0)
    model = randomize_batch_norm(torchvision.models.get_model(name).eval())
    calib = [b[0] for b in open_data("builtin:photos", batch_size=16, limit=32)]
    graph = lower(model, (calib[0][:1],))
    run_pipeline(graph, NATIVE_PTQ, PassContext(calib_data=[(b,) for b in calib]))
    write_model(graph, tmp_path / "model")
    emitted = load_model(tmp_path / "model")
    ops = set()
    for form in ("qdq", "qoperator"):
        path = export_onnx(graph, tmp_path / f"{form}.onnx", form=form, narrow_convs="plain")
        ops |= {n.op_type for n in onnx.load(str(path)).graph.node}
        for r in check_onnx(path, emitted, calib, output_scale(graph)):
            assert r.within_1_lsb >= 0.99 and r.top1_agreement >= 0.9, (form, r)
    assert ("Split" in ops) if name.startswith("shufflenet") else ({"Sigmoid", "Mul"} <= ops)


@pytest.mark.parametrize("name", ["encoder", "block"])
def test_transformer_float_graph_exports_exactly(name, tmp_path):
    torch.manual_seed(0)
    model = (PatchTransformer() if name == "encoder" else AttentionBlock()).eval()
    x = torch.randn(1, 12, 16 if name == "encoder" else 32)
    graph = lower(model, (x,))
    ops = {n.op for n in graph.nodes()}
    assert {"layer_norm", "gelu", "softmax"} <= ops if name == "block" else "scaled_dot_product_attention" in ops
    path, emitted = _export(graph, tmp_path)
    batches = [torch.randn(3, *x.shape[1:]), torch.randn(5, *x.shape[1:])]  # the batch stays dynamic
    results = check_onnx(path, emitted, batches, None)
    assert all(r.max_error < 1e-4 for r in results)


@pytest.mark.parametrize("form", ["qdq", "qoperator"])
def test_transformer_int8_export_runs_in_onnxruntime_close_to_float(form, tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    model = PatchTransformer().eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 12, 16, generator=g) for _ in range(4)]
    graph = lower(model, (calib[0][:1],))
    run_pipeline(graph, "ptq" if form == "qdq" else NATIVE_PTQ, PassContext(calib_data=[(b,) for b in calib]))
    write_model(graph, tmp_path / "model")
    path = export_onnx(graph, tmp_path / "model.onnx", form=form)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "LayerNormalization", "Softmax"} <= ops
    assert ("QLinearConv" in ops) == (form == "qoperator")
    x = torch.randn(6, 12, 16, generator=g)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        reference, ours = model(x), load_model(tmp_path / "model")(x)
    assert sqnr(got, reference) > 25
    assert (got.argmax(1) == ours.argmax(1)).float().mean() == 1.0


def test_dynamic_linears_export_with_torchs_seven_bit_inputs(tmp_path):
    import onnxruntime as ort

    model = load_user_model("zoo:digit_cnn").module
    data = open_data("builtin:mnist5k", limit=512, batch_size=128)
    x = torch.cat([b[0] for b in data])
    graph = lower(model, (x[:1],))
    run_pipeline(graph, "dynamic")
    write_model(graph, tmp_path / "model")
    path = export_onnx(graph, tmp_path / "model.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("MatMulInteger") == ops.count("ReduceMax") == 2
    results = check_onnx(path, load_model(tmp_path / "model"), [x], None, graph=graph)
    assert all(r.top1_agreement >= 0.99 for r in results)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        reference, torch_int8 = model(x), load_model(tmp_path / "model")(x)
    # the same 7-bit input rounding as torch's kernel: far closer to it than either is to float
    assert sqnr(got, torch_int8) > sqnr(torch_int8, reference) + 20


class Tagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(8, 16, batch_first=True)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.lstm(x)[0])


class ProjectedTagger(Tagger):
    """An LSTM with proj_size, which the exporter does not take yet."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(8, 16, batch_first=True, proj_size=4)
        self.head = torch.nn.Linear(4, 4)


@pytest.mark.parametrize("form", ["qdq", "qoperator"])
def test_two_inputs_and_two_outputs(form, tmp_path):
    from qcompile.compare import compare, format_table
    from qcompile.onnx.runtime.check import output_scales
    from qcompile.onnx.runtime.session import OnnxModel

    torch.manual_seed(0)
    model = randomize_batch_norm(TwoInputsTwoHeads())
    g = torch.Generator().manual_seed(0)
    calib = [(torch.rand(4, 3, 16, 16, generator=g), torch.rand(4, 1, generator=g)) for _ in range(3)]
    graph = lower(model, tuple(t[:1] for t in calib[0]))
    run_pipeline(graph, "ptq" if form == "qdq" else NATIVE_PTQ, PassContext(calib_data=calib))
    write_model(graph, tmp_path / "model")
    path = export_onnx(graph, tmp_path / "model.onnx", form=form)
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["x", "scale"]
    assert [o.name for o in proto.graph.output] == ["output_0", "output_1"]
    scales = output_scales(graph)
    assert len(scales) == 2 and all(scales)
    emitted = load_model(tmp_path / "model")
    for r in check_onnx(path, emitted, calib, scales, graph=graph):
        assert r.within_1_lsb >= 0.99 and r.top1_agreement == 1.0
    logits, box = OnnxModel(path)(*calib[0])
    assert logits.shape == (4, 5) and box.shape == (4, 4)

    class Batches(list):
        labels = None

    threads = torch.get_num_threads()
    rows = compare([("float", model, 1), ("int8", emitted, 1), ("onnx", OnnxModel(path), 1)], Batches(calib),
                   repeats=2, threads=threads + 1)
    assert torch.get_num_threads() == threads  # timed at threads + 1, the caller's setting left as it was
    assert [r.agreement for r in rows[1:]] == [1.0, 1.0] and rows[2].sqnr_db > 25
    with torch.no_grad():  # SQNR of each output, the box's too; the row shows the worst
        float_box = torch.cat([model(*b)[1] for b in calib])
        onnx_box = torch.cat([OnnxModel(path)(*b)[1] for b in calib])
    box_sqnr = float(10 * torch.log10(float_box.pow(2).mean() / (onnx_box - float_box).pow(2).mean()))
    assert len(rows[2].output_sqnr_db) == 2 and rows[2].output_sqnr_db[1] == pytest.approx(box_sqnr, abs=1e-3)
    assert rows[2].sqnr_db == min(rows[2].output_sqnr_db)
    table = format_table(rows)
    assert "SQNR dB (worst output)" in table and "onnx: SQNR dB per output" in table


def test_compare_refuses_a_variant_with_other_outputs():
    from qcompile.compare import compare

    class FirstHead(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x, scale):
            return self.model(x, scale)[0]

    class Batches(list):
        labels = None

    model = TwoInputsTwoHeads().eval()
    batches = Batches([(torch.rand(2, 3, 16, 16), torch.rand(2, 1))])
    with pytest.raises(QCompileError, match="one-head gives 1 outputs, the float model 2"):
        compare([("float", model, 1), ("one-head", FirstHead(model), 1)], batches, repeats=1)


def test_export_onnx_of_a_graph_the_exporter_refuses_writes_nothing(tmp_path):
    from tests.test_cli import qcompile

    out = tmp_path / "out"
    run = qcompile("tests.test_onnx:ProjectedTagger", "--input-shape", "1,5,8", "--passes", "fuse", "--export", "onnx",
                   "-o", out)
    assert run.returncode == 2, run.stderr
    assert "LSTM with proj_size is not exported to ONNX yet" in run.stderr and "Traceback" not in run.stderr
    assert not out.exists()


class _Recurrent(torch.nn.Module):
    def __init__(self, kind: str, batch_first: bool, bidirectional: bool, layers: int):
        super().__init__()
        rnn = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
        self.kind = kind
        self.rnn = rnn(6, 10, num_layers=layers, batch_first=batch_first, bidirectional=bidirectional)

    def forward(self, x):
        out, state = self.rnn(x)
        if self.kind == "lstm":
            return out, state[0], state[1]
        return out, state


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("batch_first, bidirectional, layers", [(True, False, 1), (False, True, 2)])
def test_float_lstm_and_gru_export_exactly(kind, batch_first, bidirectional, layers, tmp_path):
    torch.manual_seed(0)
    model = _Recurrent(kind, batch_first, bidirectional, layers).eval()
    shape = (1, 7, 6) if batch_first else (7, 1, 6)
    graph = lower(model, (torch.randn(shape),))
    assert graph.find(op=kind)
    write_model(graph, tmp_path / "model")
    path = export_onnx(graph, tmp_path / "model.onnx")
    # the exported input's first axis is dynamic: the batch (batch-first) or the sequence length
    batches = [torch.randn(3, *shape[1:]) for _ in range(2)]  # other than the example's 1 or 7
    results = check_onnx(path, load_model(tmp_path / "model"), batches, None)
    assert all(r.max_error < 1e-4 for r in results)


def test_graphs_lowered_through_torch_export_export_to_onnx(tmp_path):
    """Functional pooling and the other aten ops torch.export leaves, float and int8."""
    model = randomize_batch_norm(torchvision.models.resnet18())
    x = torch.randn(2, 3, 64, 64)
    graph = lower(model, (x[:1],), frontend="export")
    assert graph.find(op="max_pool2d")[0].kind.name == "FUNCTION"
    run_pipeline(graph, "fuse")
    path, emitted = _export(graph, tmp_path / "float")
    assert all(r.max_error < 1e-4 for r in check_onnx(path, emitted, [x], None))
    digits = load_user_model("zoo:digit_cnn").module
    data = [b[0] for b in open_data("builtin:mnist5k", limit=256, batch_size=64)]
    graph = lower(digits, (data[0][:1],), frontend="export")
    run_pipeline(graph, "ptq", PassContext(calib_data=[(b,) for b in data]))
    path, emitted = _export(graph, tmp_path / "int8")
    for r in check_onnx(path, emitted, data, output_scale(graph)):
        assert r.within_1_lsb >= 0.99 and r.top1_agreement >= 0.99


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("batch_first, bidirectional, layers", [(True, False, 1), (False, True, 2)])
def test_dynamic_lstm_and_gru_export_with_torchs_integer_arithmetic(kind, batch_first, bidirectional, layers,
                                                                    tmp_path):
    torch.manual_seed(0)
    model = _Recurrent(kind, batch_first, bidirectional, layers).eval()
    shape = (1, 7, 6) if batch_first else (7, 1, 6)
    graph = lower(model, (torch.randn(shape),))
    run_pipeline(graph, "dynamic")
    assert graph.find(op=kind)[0].quant.mode == "dynamic"
    write_model(graph, tmp_path / "model")
    path = export_onnx(graph, tmp_path / "model.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Scan") == layers * (2 if bidirectional else 1) and kind.upper() not in ops
    batches = [2 * torch.randn(3, *shape[1:]) for _ in range(2)]  # another batch / sequence length than the example's
    int8 = load_model(tmp_path / "model")
    results = check_onnx(path, int8, batches, None, graph=graph)
    with torch.no_grad():
        rounding = max(float((a - b).abs().max()) for a, b in zip(model(batches[0]), int8(batches[0]), strict=True))
    # the same codes as torch's int8 kernels: only float rounding apart, far below what int8 costs against float
    assert rounding > 1e-3
    assert all(r.max_error < 1e-5 for r in results)


def test_recurrent_layers_lowered_through_torch_export_quantize_and_export(tmp_path):
    # torch.export spells self.lstm(x) as zero states and aten.lstm returning (out, h, c): raised back to the
    # modules fx gives, so that dynamic quantizes them and the exporter takes them
    torch.manual_seed(0)
    model = RecurrentStates().eval()
    example = torch.randn(1, 5, 8)
    graph = lower(model, (example,), frontend="export")  # (torch.export fixes an LSTM's length)
    fx_graph = lower(model, (example,))
    for kind in ("lstm", "gru"):
        ours, theirs = graph.find(op=kind)[0], fx_graph.find(op=kind)[0]
        assert ours.kind == theirs.kind == NodeKind.MODULE and ours.attrs == theirs.attrs
        assert ours.params == theirs.params and ours.type == theirs.type
    assert not graph.find(op="zeros")
    batches = [torch.randn(3, 5, 8) for _ in range(2)]  # another batch than the example's
    with torch.no_grad():
        assert torch.equal(Interpreter(graph).run(batches[0]), model(batches[0]))
    run_pipeline(graph, "dynamic")
    assert {n.op for n in graph.find(kind=NodeKind.MODULE) if n.quant.mode == "dynamic"} == {"lstm", "gru", "linear"}
    write_model(graph, tmp_path / "model")
    path = export_onnx(graph, tmp_path / "model.onnx")
    assert [n.op_type for n in onnx.load(str(path)).graph.node].count("Scan") == 5  # 2 layers x 2 directions + GRU
    assert all(r.max_error < 1e-5 for r in check_onnx(path, load_model(tmp_path / "model"), batches, None,
                                                       graph=graph))


def test_dynamic_lstm_tagger_exports_and_checks_from_the_cli(tmp_path):
    from tests.test_cli import qcompile

    torch.manual_seed(0)
    torch.save(torch.randn(16, 5, 8), tmp_path / "sequences.pt")
    out = tmp_path / "out"
    run = qcompile("tests.test_onnx:Tagger", "--input-shape", "1,5,8", "--passes", "dynamic", "--export", "onnx",
                   "--check", "--check-data", tmp_path / "sequences.pt", "-o", out)
    assert run.returncode == 0, run.stderr
    assert "| on | 16 |" in run.stdout
    assert (out / "model.onnx").exists()
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    assert "Scan" in ops and ops.count("MatMulInteger") == 2  # the LSTM's input projection and the head


class _Resizing(torch.nn.Module):
    """A conv, then nn.Upsample or F.interpolate to a size or by a scale factor."""

    def __init__(self, mode: str, how: str):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        linear = "linear" in mode
        self.up = torch.nn.Upsample(scale_factor=2, mode=mode, **({"align_corners": False} if linear else {}))
        self.mode, self.how = mode, how

    def forward(self, x):
        y = torch.relu(self.conv(x))
        if self.how == "module":
            return self.up(y)
        if self.how == "size":
            corners = {"align_corners": True} if "linear" in self.mode else {}
            return torch.nn.functional.interpolate(y, size=(15, 9), mode=self.mode, **corners)
        return torch.nn.functional.interpolate(y, scale_factor=1.7, mode=self.mode)


@pytest.mark.parametrize("mode", ["nearest", "nearest-exact", "bilinear"])
@pytest.mark.parametrize("how", ["module", "size", "scale"])
def test_upsample_and_interpolate_export_as_resize_with_torchs_positions(mode, how, tmp_path):
    from qcompile.onnx.runtime.check import output_scales

    torch.manual_seed(0)
    model = _Resizing(mode, how).eval()
    x = torch.randn(2, 3, 10, 10)
    for passes in ("fuse", "ptq"):
        graph = lower(model, (x[:1],))
        run_pipeline(graph, passes, PassContext(calib_data=[(torch.randn(8, 3, 10, 10),)]))
        write_model(graph, tmp_path / passes)
        path = export_onnx(graph, tmp_path / f"{passes}.onnx")
        assert "Resize" in [n.op_type for n in onnx.load(str(path)).graph.node]
        int8 = passes == "ptq"
        results = check_onnx(path, load_model(tmp_path / passes), [x], output_scales(graph) if int8 else None,
                             graph=graph)
        if int8:  # the check itself demands 99% within 1 LSB; these agree within 1 everywhere
            assert all(r.max_error_lsb <= 1 for r in results)
        else:
            assert all(r.max_error < 1e-5 for r in results)


def test_resizing_the_exporter_does_not_take_is_refused_with_the_modes_it_does(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Upsample(scale_factor=2, mode="bicubic")).eval()
    graph = lower(model, (torch.randn(1, 3, 8, 8),))
    with pytest.raises(QCompileError, match="mode='bicubic' is not exported") as info:
        export_onnx(graph, tmp_path / "model.onnx")
    assert "nearest, nearest-exact, linear, bilinear" in str(info.value.hint)
    assert not (tmp_path / "model.onnx").exists()


def test_a_segmentation_model_with_a_dict_output_and_computed_sizes_exports_in_int8(tmp_path):
    """torchvision's LR-ASPP: F.interpolate to ``x.shape[-2:]`` (a slice of a shape) and ``{"out": ...}``."""
    from qcompile.onnx.runtime.check import output_scales

    torch.manual_seed(0)
    model = randomize_batch_norm(torchvision.models.get_model("lraspp_mobilenet_v3_large", weights=None,
                                                              weights_backbone=None)).eval()
    graph = lower(model, (torch.randn(1, 3, 96, 96),))
    run_pipeline(graph, "ptq", PassContext(calib_data=[(torch.randn(4, 3, 96, 96),)]))
    write_model(graph, tmp_path / "model")
    path = export_onnx(graph, tmp_path / "model.onnx")
    exported = onnx.load(str(path))
    assert [o.name for o in exported.graph.output] == ["out"]
    assert [n.op_type for n in exported.graph.node].count("Resize") == 2
    results = check_onnx(path, load_model(tmp_path / "model"), [torch.randn(2, 3, 96, 96)], output_scales(graph),
                         graph=graph)
    assert all(r.within_1_lsb >= 0.99 for r in results)


class _DictHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        return {"x": self.head(x), "logits": 2 * self.head(x)}


def test_dict_outputs_are_named_by_their_keys_and_an_input_name_is_not_reused(tmp_path):
    graph = lower(_DictHeads().eval(), (torch.randn(1, 4),))
    write_model(graph, tmp_path / "model")
    path = export_onnx(graph, tmp_path / "model.onnx")
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["output_x", "logits"]
    results = check_onnx(path, load_model(tmp_path / "model"), [torch.randn(3, 4)], None)
    assert all(r.max_error < 1e-5 for r in results)
