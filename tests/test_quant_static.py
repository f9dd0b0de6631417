"""Post-training static quantization end to end, against torch.ao FX and the float model."""

from __future__ import annotations

import pytest
import torch
import torchvision

from qcompile.codegen import load_model, write_model
from qcompile.data import open_data
from qcompile.frontend.loaders import load_model as load_user_model
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.ir import NodeKind, print_graph
from qcompile.pipeline import PassContext, run_pipeline
from qcompile.quant.config import QuantConfig, load_quant_config
from tests.models import PatchTransformer, randomize_batch_norm
from tests.torchao_reference import fx_quantize, lsb_agreement, sqnr

FX_FUSION = "ptq-torchao"  # torch.ao's fusions (it does not fuse ReLU6) and its 7-bit activation grids


def _quantize(model, calib, preset="x86", pipeline="fuse,calibrate,convert{backend=native}", config=None):
    graph = lower(model, (calib[0][0][:1],))
    config = config or QuantConfig.from_preset(preset)
    records = run_pipeline(graph, pipeline, PassContext(calib_data=calib, quant_config=config))
    return graph, records


def _output_scale(graph):
    return float(graph.inputs(graph.find(op="dequantize")[-1])[0].quant.qparams.scale)


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return randomize_batch_norm(torchvision.models.resnet18())


@pytest.fixture(scope="module")
def random_images():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 96, 96, generator=g),) for _ in range(3)], torch.randn(6, 3, 96, 96, generator=g)


def test_resnet18_default_preset_is_bit_exact_with_torch_ao(resnet18, random_images):
    calib, test = random_images
    graph, _ = _quantize(resnet18, calib, "default", FX_FUSION)
    ours = Interpreter(graph).run(test)
    theirs = fx_quantize(resnet18, calib, "default")(test)
    within, exact = lsb_agreement(ours, theirs, _output_scale(graph))
    assert within >= 0.99 and exact == 1.0


def test_resnet18_x86_preset_sqnr_at_least_torch_ao(resnet18, random_images):
    calib, test = random_images
    graph, _ = _quantize(resnet18, calib, "x86", FX_FUSION)
    with torch.no_grad():
        want = resnet18(test)
    ours = sqnr(Interpreter(graph).run(test), want)
    theirs = sqnr(fx_quantize(resnet18, calib, "x86")(test), want)
    assert ours >= theirs - 0.5, (ours, theirs)


def test_converted_graph_reads_like_the_seeds_by_hand(resnet18, random_images):
    calib, _ = random_images
    graph, records = _quantize(resnet18, calib, "x86")
    assert [r.pass_.name for r in records] == ["fuse", "stubs", "observe", "calibrate", "convert"]
    text = print_graph(graph)
    assert text.count("= quantize(") == 1 and text.count("= dequantize(") == 1  # QuantStub / DeQuantStub
    assert "torch.ops.quantized.add_relu" in text  # FloatFunctional, without editing the model
    assert "torch.ao.nn.intrinsic.quantized.ConvReLU2d" in text
    assert graph.node("maxpool").quant.shares == "conv1"
    assert str(graph.node("fc").type) == "qu8[1,1000]"


def test_emitted_int8_model_matches_graph_and_survives_torchscript(resnet18, random_images, tmp_path):
    calib, test = random_images
    graph, _ = _quantize(resnet18, calib)
    write_model(graph, tmp_path / "q")
    emitted = load_model(tmp_path / "q")
    want = Interpreter(graph).run(test)
    torch.testing.assert_close(emitted(test), want, rtol=0, atol=0)
    scripted = torch.jit.script(emitted)
    torch.jit.save(scripted, str(tmp_path / "q.pt"))
    torch.testing.assert_close(torch.jit.load(str(tmp_path / "q.pt"))(test), want, rtol=0, atol=0)
    float_size = sum(t.numel() * 4 for t in resnet18.state_dict().values() if t.is_floating_point())
    assert (tmp_path / "q" / "weights.pt").stat().st_size < 0.3 * float_size


def test_skip_list_keeps_layers_float_with_stubs_around(resnet18, random_images):
    calib, test = random_images
    config = load_quant_config(preset="x86", skip=["layer4.*", "fc"])
    graph, records = _quantize(resnet18, calib, config=config)
    assert graph.node("layer4_0_conv1").target == "torch.nn.Conv2d"
    assert graph.node("fc").target == "torch.nn.Linear"
    assert graph.node("layer3_1_conv1").target.startswith("torch.ao.nn")
    dequant = graph.find(op="dequantize")
    assert len(dequant) == 1 and graph.inputs(dequant[0])[0].name.startswith("add")
    out = Interpreter(graph).run(test)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_passes_report_no_change_on_a_second_run(resnet18, random_images):
    calib, _ = random_images
    graph, _ = _quantize(resnet18, calib, pipeline="fuse,stubs,observe")
    records = run_pipeline(graph, "stubs,observe", PassContext(calib_data=calib))
    assert [r.result.modified for r in records] == [False, False]


def test_digit_cnn_view_after_quantized_conv_and_accuracy():
    model = load_user_model("zoo:digit_cnn").module
    data = open_data("builtin:mnist5k", limit=1000, batch_size=100)
    batches = list(data)
    graph, _ = _quantize(model, batches[:2])
    assert graph.node("view").target == "reshape"  # view() cannot handle channels-last int8 tensors
    interpreter = Interpreter(graph)
    correct_q = correct_f = 0
    for x, y in data.labelled():
        correct_q += int((interpreter.run(x).argmax(1) == y).sum())
        with torch.no_grad():
            correct_f += int((model(x).argmax(1) == y).sum())
    assert correct_f >= 980 and correct_q >= correct_f - 5  # 1,000 real digits


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["default", "x86"])
def test_real_mobilenet_v2_against_torch_ao(preset):
    model = load_user_model("zoo:mobilenet_v2").module
    batches = list(open_data("builtin:photos", batch_size=16))
    calib, test = batches[:4], torch.cat([b[0] for b in batches[4:]])
    graph, _ = _quantize(model, calib, preset, FX_FUSION)
    ours = Interpreter(graph).run(test)
    theirs = fx_quantize(model, calib, preset)(test)
    with torch.no_grad():
        want = model(test)
    if preset == "default":
        within, _ = lsb_agreement(ours, theirs, _output_scale(graph))
        assert within >= 0.99
    assert sqnr(ours, want) >= sqnr(theirs, want) - 0.5


def test_static_quantization_needs_data():
    from qcompile.errors import QCompileError

    model = randomize_batch_norm(torchvision.models.resnet18())
    graph = lower(model, (torch.randn(1, 3, 64, 64),))
    with pytest.raises(QCompileError, match="needs calibration data"):
        run_pipeline(graph, "fuse,calibrate,convert", PassContext())
    assert "converted" not in graph.facts
    assert not [n for n in graph.nodes() if n.kind == NodeKind.MODULE and n.target.startswith("torch.ao.nn")]


def test_residual_network_with_real_weights_keeps_its_accuracy():
    model = load_user_model("zoo:resnet20_fashion").module
    test = open_data("builtin:fashion-test", limit=1000, batch_size=250)
    calib = list(open_data("builtin:fashion-train", limit=256, batch_size=128))
    graph, _ = _quantize(model, calib)
    assert len(graph.find(op="add")) == 9 and all(
        n.target == "torch.ops.quantized.add_relu" for n in graph.find(op="add"))
    interpreter = Interpreter(graph)
    correct_q = correct_f = 0
    for x, y in test.labelled():
        correct_q += int((interpreter.run(x).argmax(1) == y).sum())
        with torch.no_grad():
            correct_f += int((model(x).argmax(1) == y).sum())
    assert correct_f >= 850 and correct_q >= correct_f - 10


class _ReLU6Pair(torch.nn.Module):
    """Two conv + ReLU6 branches: one whose outputs reach 6, one whose outputs stay far below it."""

    def __init__(self):
        super().__init__()
        self.wide, self.narrow = torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(3, 4, 3)
        self.act1, self.act2 = torch.nn.ReLU6(), torch.nn.ReLU6()
        with torch.no_grad():
            self.wide.weight.mul_(20)
            self.narrow.weight.mul_(0.05)

    def forward(self, x):
        return torch.cat([self.act1(self.wide(x)), self.act2(self.narrow(x))], 1)


def test_relu6_clamp_only_where_the_grid_can_pass_six():
    """On its observed grid, a ReLU6 after a conv becomes an int8 hardtanh only when the grid reaches past 6;
    the one left out
    would change no code, even where the conv saturates (checked by putting the clamp back)."""
    from qcompile.quant.clamps import clamp_after

    torch.manual_seed(0)
    model = _ReLU6Pair().eval()
    calib = [(torch.randn(8, 3, 12, 12),) for _ in range(2)]
    graph = lower(model, (calib[0][0][:1],))
    run_pipeline(graph, "fuse,calibrate,convert{backend=native relu6-grid=observed}",
                 PassContext(calib_data=calib, quant_config=QuantConfig.from_preset("x86")))
    clamps = [n for n in graph.nodes() if n.op == "relu6"]
    assert [graph.inputs(n)[0].name for n in clamps] == ["wide"]
    narrow = graph.node("narrow").quant.qparams
    assert int(narrow.zero_point) == 0 and float(narrow.scale) * 255.5 <= 6  # 255 steps stay below 6
    clamped = graph.copy()
    clamp_after(clamped, clamped.node("narrow"), 0.0, 6.0, "relu6")
    x = torch.randn(4, 3, 12, 12) * 100  # far past calibration: the narrow conv's codes saturate at 255
    codes = {}
    with torch.no_grad():
        out = Interpreter(graph).run(x, hook=lambda n, v: codes.__setitem__(n.name, v))
        assert torch.equal(out, Interpreter(clamped).run(x)) and len(torch.unique(out)) > 20
    assert int(codes["narrow"].int_repr().max()) == 255


def test_transformer_encoder_static_ptq_quantizes_the_linears_inside_the_encoder(tmp_path):
    torch.manual_seed(0)
    model = PatchTransformer().eval()
    g = torch.Generator().manual_seed(1)
    calib = [(torch.randn(8, 12, 16, generator=g),) for _ in range(4)]
    graph, _ = _quantize(model, calib, preset="default")
    linears = [n for n in graph.find(op="linear") if ".quantized." in n.target]
    # embed, head, and per layer: attention in/out projections and the two feed-forward linears
    assert len(linears) == 2 + 2 * 4
    x = torch.randn(5, 12, 16, generator=g)  # held out, and another batch size
    with torch.no_grad():
        reference = model(x)
    assert sqnr(Interpreter(graph).run(x), reference) > 25
    write_model(graph, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path)(x), Interpreter(graph).run(x), rtol=0, atol=0)


def test_a_move_between_a_float_op_and_the_region_runs_on_int8_behind_one_quantize():
    # the encoder's layer norm feeds both a residual add and, through a transpose, the next attention's
    # projection: the transpose joins the region, so the layer norm's output is quantized once
    torch.manual_seed(0)
    model = PatchTransformer().eval()
    g = torch.Generator().manual_seed(1)
    calib = [(torch.randn(8, 12, 16, generator=g),) for _ in range(4)]
    graph, _ = _quantize(model, calib, preset="default", pipeline="fuse,stubs")
    quantized_values = [graph.inputs(q)[0].name for q in graph.find(op="quantize")]
    assert len(quantized_values) == len(set(quantized_values))
    moves = [n for n in graph.find(op="transpose") if n.quant.mode == "static"]
    assert moves and all(graph.inputs(n)[0].op == "quantize" or graph.inputs(n)[0].quant.mode == "static"
                         for n in moves)
    before = [n.name for n in graph.find(op="quantize")]
    assert not any(name.startswith("quantize_transpose") for name in before)
