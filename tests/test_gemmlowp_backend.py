"""The gemmlowp backend: custom ops, deployment (torch.export, TorchScript, fx), agreement with native."""

from __future__ import annotations

import functools

import pytest
import qcompile.kernels  # noqa: F401
import torch
import torchvision
from qcompile.kernels import fixed_point as fp
from torch import nn

from qcompile.backend_agreement import layer_agreement, output_agreement
from qcompile.codegen import load_model as load_emitted
from qcompile.codegen import write_model
from qcompile.data import open_data
from qcompile.diagnose.amplification import one_step_reach
from qcompile.errors import QCompileError
from qcompile.frontend.loaders import load_model
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.pipeline import PassContext, run_pipeline
from qcompile.quant.config import QuantConfig, load_quant_config
from tests.pipelines import NATIVE_PTQ
from tests.test_cli import qcompile


def _sample_args():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 4, 6, 6), dtype=torch.uint8, generator=g)
    w = torch.randint(-127, 128, (8, 4, 3, 3), dtype=torch.int8, generator=g)
    bias = torch.randint(-100, 100, (8,), dtype=torch.int32, generator=g)
    m0, exponent = fp.quantize_multipliers(torch.full((8,), 0.002, dtype=torch.float64))
    return x, w, bias, m0, exponent


def test_ops_pass_torch_library_opcheck():
    x, w, bias, m0, exponent = _sample_args()
    f = torch.randn(2, 4, 6, 6)
    cases = [
        (torch.ops.qcompile.quantize.default, (f, torch.tensor(0.03), torch.tensor(120, dtype=torch.int32), 0, 255)),
        (torch.ops.qcompile.dequantize.default, (x, torch.tensor(0.03), torch.tensor(120, dtype=torch.int32))),
        (torch.ops.qcompile.qconv2d.default, (x, 3, w, bias, m0, exponent, 5, 5, 255, [1, 1], [1, 1], [1, 1], 1)),
        (torch.ops.qcompile.qlinear.default, (x.reshape(2, -1)[:, :36], 3, w.reshape(8, -1), bias, m0, exponent,
                                               5, 0, 255)),
        (torch.ops.qcompile.qadd.default, (x, 3, 1 << 30, 0, x, 7, 1 << 30, -1, 1 << 30, -19, 9, 0, 255)),
        (torch.ops.qcompile.max_pool2d.default, (x.contiguous(memory_format=torch.channels_last), [3, 3], [2, 2],
                                                 [1, 1], [1, 1], False)),
        (torch.ops.qcompile.global_avg_pool.default, (x.contiguous(memory_format=torch.channels_last),)),
        (torch.ops.qcompile.avg_pool2d.default, (x, 40, [3, 3], [2, 2], [1, 1], True, False)),
    ]
    for op, args in cases:
        results = torch.library.opcheck(op, args)
        assert set(results.values()) == {"SUCCESS"}, (op, results)


def test_kernel_modules_follow_their_inputs_and_tensors():
    """A weighted kernel module keeps its kernel call between calls; a new input shape, an in-place change of
    its weights, a new bias tensor or another thread count each give the reference module's integers again."""
    import copy
    import pickle

    from qcompile.kernels import modules

    from qcompile.integer import reference

    generator = torch.Generator().manual_seed(11)
    conv = modules.QConv2d(24, 32, (3, 3), padding=(1, 1), input_zero_point=7, output_zero_point=3)
    linear = modules.QLinear(40, 24, input_zero_point=9, output_zero_point=5)
    for module, depth in ((conv, 24 * 9), (linear, 40)):
        module.weight.copy_(torch.randint(-127, 128, module.weight.shape, dtype=torch.int8, generator=generator))
        module.bias.copy_(torch.randint(-3000, 3000, module.bias.shape, dtype=torch.int32, generator=generator))
        m0, exponent = fp.quantize_multipliers(torch.full(module.bias.shape, 0.0074 / depth ** 0.5,
                                                        dtype=torch.float64))
        module.multiplier.copy_(m0), module.exponent.copy_(exponent)

    def check(module, x):
        want = type(module).__mro__[1].forward(module, x)  # the reference module's forward
        assert isinstance(module, reference._Weighted) and len(torch.unique(want)) > 20
        assert torch.equal(module(x), want)

    def codes(*shape, channels_last=False):
        x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    for module, shapes in ((conv, [(1, 24, 9, 9), (2, 24, 5, 7)]), (linear, [(3, 40), (2, 5, 40)])):
        for shape in shapes:
            x = codes(*shape, channels_last=module is conv)
            check(module, x)
            check(module, x)  # the kept call
        module.weight.mul_(-1).clamp_(-127, 127)  # in place
        check(module, x)
        module.bias = module.bias + 500  # a new tensor
        check(module, x)
        threads = torch.get_num_threads()
        torch.set_num_threads(1 if threads > 1 else 2)
        try:
            check(module, x)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(pickle.loads(pickle.dumps(module))(x), module(x))  # the kept call stays out
        assert torch.equal(copy.deepcopy(module)(x), module(x))


class _FunctionalPool(nn.Module):
    """A digit classifier written with ``F.max_pool2d`` (the function form, not the module)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 9 * 9, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 3, stride=3, padding=0)
        return self.fc(x.flatten(1))


def test_function_form_max_pool_runs_on_the_integer_codes(tmp_path):
    """F.max_pool2d(x, 3, stride=3) becomes QMaxPool2d with the call's arguments; its output equals torch's max
    pooling of the same codes, and the whole model agrees with native."""
    torch.manual_seed(0)
    model = _FunctionalPool().eval()
    calib = open_data("builtin:mnist5k", limit=128, batch_size=64)
    graphs = {}
    for backend in ("native", "gemmlowp"):
        graphs[backend] = lower(model, (torch.zeros(1, 1, 28, 28),))
        run_pipeline(graphs[backend], same_grids(backend),
                     PassContext(calib_data=calib, quant_config=QuantConfig.from_preset("x86")))
    pool = next(n for n in graphs["gemmlowp"].nodes() if n.op == "max_pool2d")
    assert pool.target == "qcompile.kernels.modules.QMaxPool2d"
    assert (pool.attrs["kernel_size"], pool.attrs["stride"], pool.attrs["padding"]) == (3, 3, 0)
    x = next(iter(calib))[0]
    rows = {r.name: r for r in layer_agreement(graphs["native"], graphs["gemmlowp"], (x,))}
    assert rows[pool.name].exact == 1.0 and rows[pool.name].elements == 64 * 16 * 9 * 9
    assert output_agreement(graphs["native"], graphs["gemmlowp"], (x,)).within_one > 0.99


def same_grids(backend: str) -> str:
    """ptq on ``backend`` with the preset's activation grids, so that two backends can be compared code for code
    (by default gemmlowp's activations get full 8-bit grids, which torch's x86 kernels do not compute exactly)."""
    return f"fuse,stubs,observe{{activation-grid=preset}},calibrate,convert{{backend={backend}}}"


def _digits(tmp_path, backend):
    calib = open_data("builtin:mnist5k", limit=256, batch_size=64)
    graph = lower(load_model("zoo:digit_cnn").module, (torch.zeros(1, 1, 28, 28),))
    run_pipeline(graph, same_grids(backend),
                 PassContext(calib_data=calib, quant_config=QuantConfig.from_preset("x86")))
    write_model(graph, tmp_path / backend)
    return graph, load_emitted(tmp_path / backend)


def test_emitted_model_traces_scripts_and_exports(tmp_path):
    graph, model = _digits(tmp_path, "gemmlowp")
    assert "qcompile.kernels.modules.QConv2d" in (tmp_path / "gemmlowp" / "model.py").read_text()
    assert "u8[1,32,28,28]" in (tmp_path / "gemmlowp" / "graph.qir").read_text()
    x = next(iter(open_data("builtin:mnist5k", limit=16)))[0]
    expected = model(x)
    traced = torch.fx.symbolic_trace(model)
    assert torch.equal(traced(x), expected)
    assert torch.equal(torch.jit.script(model)(x), expected)
    program = torch.export.export(model, (x,))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"qcompile.qconv2d.default", "qcompile.qlinear.default", "qcompile.quantize.default"} <= ops
    torch.export.save(program, tmp_path / "m.pt2")
    assert torch.equal(torch.export.load(tmp_path / "m.pt2").module()(x), expected)
    # the saved weights are plain int8 / int32 tensors
    state = torch.load(tmp_path / "gemmlowp" / "weights.pt", weights_only=True)
    assert state["conv_layers_0.weight"].dtype == torch.int8 and state["conv_layers_0.multiplier"].dtype == torch.int32


def test_gemmlowp_matches_native_on_real_digits(tmp_path):
    native_graph, native = _digits(tmp_path, "native")
    gemmlowp_graph, gemmlowp = _digits(tmp_path, "gemmlowp")
    data = open_data("builtin:mnist5k", limit=1000, batch_size=250)
    correct = {"native": 0, "gemmlowp": 0}
    for x, y in data.labelled():
        correct["native"] += int((native(x).argmax(1) == y).sum())
        correct["gemmlowp"] += int((gemmlowp(x).argmax(1) == y).sum())
    assert correct["gemmlowp"] >= 975 and abs(correct["gemmlowp"] - correct["native"]) <= 3, correct
    x = next(iter(data))[0]
    layers = layer_agreement(native_graph, gemmlowp_graph, (x,))
    # quantize, three convolutions, three max pools, two linear layers
    assert len(layers) == 9 and all(r.within_one == 1.0 and r.exact > 0.99 for r in layers), layers
    assert output_agreement(native_graph, gemmlowp_graph, (x,)).within_one >= 0.99


def test_full_activation_grids_on_request_for_the_native_backend():
    """observe{activation-grid=full}: the whole uint8 grid whatever the backend (exact for torch's x86 kernels on
    CPUs with VNNI only, so never the default); weights keep their preset."""
    data = open_data("builtin:mnist5k", limit=256, batch_size=64)
    graph = lower(load_model("zoo:digit_cnn").module, (torch.zeros(1, 1, 28, 28),))
    records = run_pipeline(graph, "fuse,stubs,observe{activation-grid=full},calibrate,convert{backend=native}",
                           PassContext(calib_data=data))
    assert {n.quant.observer.quant_range[1] for n in graph.nodes() if n.quant.observer is not None} == {255}
    assert {n.quant.weight_observer.quant_range for n in graph.nodes() if n.quant.weight_observer} == {(-128, 127)}
    observe = next(r for r in records if r.pass_.name == "observe")
    assert observe.result.stats["grids for full 8-bit"] == 6
    assert graph.attrs["backend"] == "native"


def test_gemmlowp_activations_get_full_8_bit_grids(tmp_path):
    """gemmlowp's kernels are exact on codes 0-255, so the default pipeline gives its activations the whole uint8
    grid where the x86 preset has 7 bits; the native backend keeps the preset's, and an override stays."""
    data = open_data("builtin:mnist5k", limit=512, batch_size=64)
    x = next(iter(open_data("builtin:mnist5k", batch_size=1000)))[0]
    model = load_model("zoo:digit_cnn").module
    with torch.no_grad():
        reference = model(x)
    sqnr = {}
    for name, pipeline in (("native", NATIVE_PTQ), ("gemmlowp", "fuse,calibrate,convert{backend=gemmlowp}"),
                           ("gemmlowp, preset grid", same_grids("gemmlowp"))):
        graph = lower(model, (torch.zeros(1, 1, 28, 28),))
        records = run_pipeline(graph, pipeline, PassContext(calib_data=data))
        tops = {n.quant.observer.quant_range[1] for n in graph.nodes() if n.quant.observer is not None}
        assert tops == ({255} if name == "gemmlowp" else {127}), (name, tops)
        observe = next(r for r in records if r.pass_.name == "observe")
        assert observe.result.stats.get("grids for gemmlowp", 0) == (6 if name == "gemmlowp" else 0)
        sqnr[name] = _sqnr(Interpreter(graph).run(x), reference)
    assert sqnr["gemmlowp"] > sqnr["gemmlowp, preset grid"] + 2, sqnr  # measured 40.2 against 35.7 dB

    config = tmp_path / "q.toml"
    config.write_text('[[override]]\nmatch = "op:conv2d"\nactivation = { reduce_range = true, kind = "minmax" }\n')
    graph = lower(model, (torch.zeros(1, 1, 28, 28),))
    run_pipeline(graph, "fuse,calibrate,convert{backend=gemmlowp}",
                 PassContext(calib_data=data, quant_config=load_quant_config(config)))
    convs = [n for n in graph.nodes() if n.op == "conv2d"]
    assert convs and all(n.quant.observer.quant_range == (0, 127) for n in convs)  # the user's override stands


def test_cli_backend_and_deploy_export(tmp_path):
    out = tmp_path / "g"
    run = qcompile("zoo:digit_cnn", "--passes", "ptq", "--backend", "gemmlowp", "--calib", "builtin:mnist5k",
                   "--calib-samples", "128", "--deploy", "export", "--deploy", "torchscript", "-o", out)
    assert run.returncode == 0, run.stderr
    assert "model.pt2 (torch.export; reloaded: outputs identical within 0)" in run.stderr
    assert (out / "model.torchscript.pt").is_file()
    assert "torch.backends.quantized.engine" not in (out / "model.py").read_text()
    refused = qcompile("zoo:digit_cnn", "--passes", "ptq", "--backend", "native", "--calib", "builtin:mnist5k",
                       "--deploy", "export", "-o", tmp_path / "n")
    assert refused.returncode == 2 and "--backend gemmlowp" in refused.stderr and not (tmp_path / "n").exists()
    no_convert = qcompile("zoo:digit_cnn", "--passes", "fuse", "--backend", "gemmlowp", "-o", tmp_path / "f")
    assert no_convert.returncode == 2 and "pipeline has none" in no_convert.stderr


class _Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4).eval()

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y + y)  # a norm after an add does not fold: no integer kernel for it


def test_ops_the_kernels_do_not_cover_are_named():
    graph = lower(_Gate(), (torch.randn(1, 3, 8, 8),))
    with pytest.raises(QCompileError, match=r"integer stage \(qcompile.s kernels\) does not cover these quantized ops: batch_norm2d \(%bn\)"):
        run_pipeline(graph, "fuse,calibrate,convert{backend=gemmlowp}",
                     PassContext(calib_data=[(torch.randn(2, 3, 8, 8),)]))


def _sqnr(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.pow(2).mean() / (out - reference).pow(2).mean()))


@functools.cache
def _both_backends(name: str):
    """The model converted for the native and the gemmlowp backend from the same calibration, and test inputs.

    Returns the model, the two graphs, a few inputs for the layer-by-layer comparison and the inputs that
    score the outputs (MobileNetV2: all 52 held-out photos; on 8 the two backends' SQNR moved by up to 0.53 dB
    with the calibration's histogram binning, on all 52 by 0.24 dB).
    """
    torch.manual_seed(0)
    if name == "resnet18":
        model = torchvision.models.resnet18().eval()
        calib = [(torch.randn(8, 3, 224, 224),) for _ in range(2)]
        scored = x = torch.randn(4, 3, 224, 224)
    else:
        model = load_model("zoo:mobilenet_v2").module
        calib, evaluation = open_data("builtin:photos", batch_size=16).interleaved_split()
        scored = torch.cat([b[0] for b in evaluation])
        x = scored[:8]
    graphs = {}
    for backend in ("native", "gemmlowp"):
        graphs[backend] = lower(model, (x[:1],))
        run_pipeline(graphs[backend], same_grids(backend),
                     PassContext(calib_data=calib, quant_config=QuantConfig.from_preset("x86")))
    return model, graphs, x, scored


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_gemmlowp_agrees_with_native_layer_by_layer(name):
    model, graphs, x, scored = _both_backends(name)
    layers = layer_agreement(graphs["native"], graphs["gemmlowp"], (x,))
    assert len(layers) >= 30
    # every layer, given the same integer inputs: within 1 LSB everywhere, and almost always bit-exact
    assert all(r.within_one == 1.0 for r in layers), [r for r in layers if r.within_one < 1]
    assert sum(r.exact * r.elements for r in layers) / sum(r.elements for r in layers) > 0.995
    with torch.no_grad():
        reference = model(scored)
    native_sqnr = _sqnr(Interpreter(graphs["native"]).run(scored), reference)
    gemmlowp_sqnr = _sqnr(Interpreter(graphs["gemmlowp"]).run(scored), reference)
    assert abs(gemmlowp_sqnr - native_sqnr) < 0.5, (native_sqnr, gemmlowp_sqnr)
    reach = {backend: one_step_reach(graphs[backend], x) for backend in graphs}
    if name == "resnet18":
        # one step anywhere in the first layer stays within one step at the output
        assert all(r.moved < 0.01 for r in reach.values()), reach
    else:
        # MobileNetV2 amplifies single steps: one step at one element of its first conv moves about 30% of
        # that image's logits by more than 1 LSB, on either backend
        assert all(r.moved > 0.1 for r in reach.values()), reach


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    "resnet18",
    pytest.param("mobilenet_v2", marks=pytest.mark.xfail(strict=True, reason=(
        "target: 99% of outputs within 1 LSB of the native backend; measured 37.6%: the two requantize "
        "differently (gemmlowp's double rounding against torch's float multiplier) and MobileNetV2 amplifies "
        "single steps"))),
])
def test_gemmlowp_outputs_within_one_step_of_native(name):
    _, graphs, x, _ = _both_backends(name)
    assert output_agreement(graphs["native"], graphs["gemmlowp"], (x,)).within_one >= 0.99  # ResNet-18: 100%


def test_relu6_clamps_fold_into_the_convolutions_before_them(monkeypatch):
    """MobileNetV2's ReLU6 clamps become the output-stage bounds of their convs: the same codes, fewer ops.

    (On observed grids: convert already drops the clamps a grid makes redundant, and by default widens the
    grids that would need one; the clamps left are the ones folded here.)
    """
    import qcompile.integer.stage as stage

    model = load_model("zoo:mobilenet_v2").module
    calib = list(open_data("builtin:photos", batch_size=8, limit=8))
    x = calib[0][0]

    def convert() -> torch.Tensor:
        graph = lower(model, (x[:1],))
        # the preset's 7-bit grids: full 8-bit grids over a ReLU6 end at its top and need no clamp at all
        run_pipeline(graph, "fuse,stubs,observe{activation-grid=preset},calibrate,"
                     "convert{backend=gemmlowp relu6-grid=observed}",
                     PassContext(calib_data=calib, quant_config=QuantConfig.from_preset("x86")))
        return graph

    folded = convert()
    monkeypatch.setattr(stage, "fold_clamps", lambda graph: 0)
    unfolded = convert()
    clamps = {name: sum(n.target.endswith(".QClamp") for n in g.nodes())
              for name, g in (("folded", folded), ("unfolded", unfolded))}
    assert clamps["folded"] == 0 and clamps["unfolded"] >= 3, clamps  # measured: 4 with these 8 photos
    absorbed = [n for n in folded.nodes() if n.target.endswith(".QConv2d") and n.quant.absorbs is not None]
    assert len(absorbed) == clamps["unfolded"] and all(n.attrs["clamp_max"] < 255 for n in absorbed)
    with torch.no_grad():
        assert torch.equal(Interpreter(folded).run(x), Interpreter(unfolded).run(x))


_QUANTIZED_TENSOR_FUNCTIONS = ("quantize_per_tensor", "quantize_per_channel", "_make_per_tensor_quantized_tensor",
                               "_make_per_channel_quantized_tensor", "quantize_per_tensor_dynamic")


@pytest.mark.parametrize("model, calib", [("zoo:digit_cnn", "builtin:mnist5k"), ("zoo:mobilenet_v2", "builtin:photos")])
def test_gemmlowp_needs_none_of_torchs_quantized_tensors(tmp_path, monkeypatch, model, calib):
    """PyTorch deprecated its quantized tensors (pytorch issue 184982): with them gone, a gemmlowp compile, its
    checks and the emitted model still run, and give the same codes as before they went."""
    from qcompile.compiler import compile_model

    def compile_to(out):
        return compile_model(model, passes="fuse,calibrate,convert{backend=gemmlowp}", out_dir=out, calib=calib,
                             calib_samples=32, batch_size=16)

    with_them = compile_to(tmp_path / "with")
    x = with_them.check_inputs.tensors
    expected = load_emitted(tmp_path / "with")(*x)

    def gone(*args, **kwargs):
        raise RuntimeError("torch's quantized tensors were removed")

    for name in _QUANTIZED_TENSOR_FUNCTIONS:
        monkeypatch.setattr(torch, name, gone)
    monkeypatch.setattr(torch.Tensor, "int_repr", gone)
    without = compile_to(tmp_path / "without")
    assert without.check == 0.0
    assert torch.equal(load_emitted(tmp_path / "without")(*x), expected)
    assert "quint8" not in (tmp_path / "without" / "model.py").read_text()
