"""The neutral integer stage (``integerize``) and the backend lowered from it (``lower{backend=gemmlowp}``).

The stage's reference modules define what the integer model computes; the
gemmlowp kernels must compute exactly that, value for value, on real models.
"""

from __future__ import annotations

import onnx
import pytest
import torch

from qcompile.data import open_data
from qcompile.errors import PipelineError
from qcompile.frontend.loaders import load_model
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.ir import print_graph
from qcompile.ir.node import NodeKind
from qcompile.onnx.export import export_onnx
from qcompile.onnx.runtime.session import OnnxModel
from qcompile.pipeline import PassContext, parse_pipeline, run_pipeline
from tests.pipelines import NATIVE_PTQ

_DATA = {"digit_cnn": ("builtin:mnist5k", (1, 1, 28, 28)), "mobilenet_v2": ("builtin:photos", (1, 3, 224, 224))}


def _compiled(name: str, passes: str, calib: list):
    graph = lower(load_model(f"zoo:{name}").module, (torch.zeros(_DATA[name][1]),))
    run_pipeline(graph, passes, PassContext(calib_data=calib))
    return graph


def _values(graph, x: torch.Tensor) -> dict[str, torch.Tensor]:
    values = {}
    with torch.no_grad():
        Interpreter(graph).run(x, hook=lambda node, value: values.__setitem__(node.name, value))
    return {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("name", ["digit_cnn", "mobilenet_v2"])
def test_gemmlowp_kernels_compute_exactly_what_the_integer_stage_computes(name):
    data, _ = _DATA[name]
    calib = list(open_data(data, limit=32, batch_size=16))
    stage = _compiled(name, "fuse,calibrate,integerize", calib)
    kernels = _compiled(name, "fuse,calibrate,integerize,lower{backend=gemmlowp}", calib)
    assert stage.attrs["backend"] == "reference" and kernels.attrs["backend"] == "gemmlowp"
    x = next(iter(open_data(data, limit=64 if name == "digit_cnn" else 8, batch_size=64, skip=32)))[0]
    reference, fast = _values(stage, x), _values(kernels, x)
    codes = [n for n in stage.nodes() if n.type is not None and getattr(n.type, "dtype", None) == "u8"]
    assert len(codes) >= (9 if name == "digit_cnn" else 60)
    for node in codes:
        assert reference[node.name].dtype == torch.uint8, node.name
        assert torch.equal(reference[node.name], fast[node.name]), node.name
    assert torch.equal(reference["output"], fast["output"])


def test_integer_stage_holds_plain_integer_tensors_only():
    calib = list(open_data("builtin:mnist5k", limit=64, batch_size=32))
    stage = _compiled("digit_cnn", "fuse,calibrate,integerize", calib)
    assert not any(t.is_quantized for t in stage.params.values())
    weighted = [n for n in stage.nodes() if n.op in ("conv2d", "linear")]
    assert len(weighted) == 5
    for node in weighted:
        assert node.target.startswith("qcompile.integer.reference.") and node.kind == NodeKind.MODULE
        dtypes = {role: stage.param(node, role).dtype for role in node.params}
        assert dtypes == {"weight": torch.int8, "bias": torch.int32, "multiplier": torch.int32,
                          "exponent": torch.int32}
        assert node.quant.weight_qparams is not None and node.quant.qparams is not None  # the grids, typed
        m0 = stage.param(node, "multiplier")
        assert bool(((m0 >= 2**30) | (m0 == 0)).all())  # gemmlowp's normalized fixed-point multipliers
    # the stage is one convert: integerize then lower prints as convert{backend=gemmlowp} does
    lowered = _compiled("digit_cnn", "fuse,calibrate,integerize,lower{backend=gemmlowp}", calib)
    converted = _compiled("digit_cnn", "fuse,calibrate,convert{backend=gemmlowp}", calib)
    assert print_graph(lowered).splitlines()[1:] == print_graph(converted).splitlines()[1:]


def test_the_digit_cnn_agrees_with_float_at_the_integer_stage():
    calib = list(open_data("builtin:mnist5k", limit=256, batch_size=64))
    stage = _compiled("digit_cnn", "fuse,calibrate,integerize", calib)
    model = load_model("zoo:digit_cnn").module.eval()
    agree = total = 0
    for x, _ in open_data("builtin:mnist5k", limit=500, batch_size=250, skip=256).labelled():
        with torch.no_grad():
            agree += int((Interpreter(stage).run(x).argmax(1) == model(x).argmax(1)).sum())
        total += len(x)
    assert agree / total >= 0.98, agree / total


def test_the_integer_stage_exports_to_onnx_within_one_step(tmp_path):
    calib = list(open_data("builtin:mnist5k", limit=256, batch_size=64))
    stage = _compiled("digit_cnn", "fuse,calibrate,integerize", calib)
    path = export_onnx(stage, tmp_path / "stage.onnx", narrow_convs="plain")
    assert sum(n.op_type == "DequantizeLinear" for n in onnx.load(path).graph.node) >= 10
    x = next(iter(open_data("builtin:mnist5k", limit=128, batch_size=128, skip=256)))[0]
    ours = Interpreter(stage).run(x)
    theirs = OnnxModel(path)(x)
    step = float(stage.node("fc_layers_2").quant.qparams.scale)
    within = ((ours - theirs).abs() <= step * 1.001).float().mean().item()
    assert within >= 0.99, within


@pytest.mark.parametrize("text, message", [
    ("ptq,lower{backend=gemmlowp}", "'integerize' cannot run after 'convert'"),
    ("fuse,calibrate,integerize,lower,lower", "'lower' cannot run after 'lower'"),
    ("fuse,calibrate,integerize,calibrate", "'calibrate' cannot run after 'integerize'"),
    ("fuse,calibrate,integerize,convert", "'convert' cannot run after 'integerize'"),
])
def test_pipelines_that_leave_the_stage_twice_are_refused_when_parsed(text, message):
    with pytest.raises(PipelineError, match=message):
        parse_pipeline(text)


def test_lower_alone_gets_the_integer_stage_before_it():
    pipeline = parse_pipeline("fuse,calibrate,lower{backend=gemmlowp}")
    assert [p.name for p in pipeline.passes][-2:] == ["integerize", "lower"]


def _deployed(kernels, x: torch.Tensor, tmp_path, min_share: float = 0.99):
    """The emitted module of a gemmlowp graph: it scripts and exports with outputs identical (as every gemmlowp
    module does), and its ONNX export's check against it (optimizations off, on)."""
    from qcompile.codegen import load_model as load_emitted
    from qcompile.codegen import write_model
    from qcompile.onnx.runtime.check import check_onnx, output_scale

    write_model(kernels, tmp_path / "int8")
    emitted = load_emitted(tmp_path / "int8")
    with torch.no_grad():
        assert torch.equal(torch.jit.script(emitted)(x), emitted(x))
        assert torch.equal(torch.export.export(emitted, (x,)).module()(x), emitted(x))
    return check_onnx(export_onnx(kernels, tmp_path / "model.onnx"), emitted, [x], output_scale(kernels),
                      graph=kernels, min_share=min_share)


def test_squeeze_excitation_and_hard_activations_run_on_the_integer_stage(tmp_path):
    """MobileNetV3's ops beyond convs and adds: the SE block's broadcast mul (QMul), hardswish and the hard
    sigmoid gate (QLookup tables), all on the stage and its kernels, value for value, and in ONNX."""
    import torchvision

    from qcompile.diagnose.metrics import sqnr_db
    from tests.models import randomize_batch_norm

    torch.manual_seed(0)
    model = randomize_batch_norm(torchvision.models.mobilenet_v3_small().eval())
    photos = [b[0] for b in open_data("builtin:photos", limit=24, batch_size=8)]
    calib, x = [(b,) for b in photos[:2]], photos[2]
    graphs = {}
    for passes in ("fuse,calibrate,integerize", "fuse,calibrate,convert{backend=gemmlowp}", NATIVE_PTQ):
        graphs[passes] = lower(model, (x[:1],))
        run_pipeline(graphs[passes], passes, PassContext(calib_data=calib))
    stage, kernels, native = graphs.values()
    targets = [n.target.rsplit(".", 1)[1] for n in stage.nodes() if n.target and ".integer.reference." in n.target]
    assert targets.count("QMul") == 9 and targets.count("QLookup") == 19 + 9  # hardswish, hard sigmoid
    reference, fast = _values(stage, x), _values(kernels, x)
    assert all(torch.equal(reference[n.name], fast[n.name]) for n in stage.nodes() if n.name in fast
               and reference[n.name].dtype == torch.uint8)
    gate = next(n for n in stage.nodes() if n.op == "hardsigmoid")  # the table is the function, code for code
    codes = torch.arange(256)
    q_in, q_out = stage.inputs(gate)[0].quant.qparams, gate.quant.qparams
    want = torch.nn.functional.hardsigmoid(q_in.scale * (codes - q_in.zero_point))
    got = q_out.scale * (stage.param(gate, "table").long() - q_out.zero_point)
    assert float((got - want).abs().max()) <= float(q_out.scale) / 2 + 1e-6
    with torch.no_grad():
        want = model(x)
        assert sqnr_db(fast["output"], want) > sqnr_db(Interpreter(native).run(x), want)  # full 8-bit grids
    (off, on) = _deployed(kernels, x, tmp_path, min_share=0.0)
    assert off.within_1_lsb >= 0.98 and on.within_1_lsb >= 0.98


def test_cats_that_requantize_and_means_run_on_the_integer_stage(tmp_path):
    """ShuffleNetV2: half of each block's input (a chunk of the previous block's output, read by a branch too)
    is concatenated with the branch's output, so the cat requantizes (QCat); its head is ``x.mean([2, 3])``."""
    import torchvision

    from tests.models import randomize_batch_norm

    torch.manual_seed(0)
    model = randomize_batch_norm(torchvision.models.shufflenet_v2_x0_5().eval())
    photos = [b[0] for b in open_data("builtin:photos", limit=24, batch_size=8)]
    calib, x = [(b,) for b in photos[:2]], photos[2]
    stage, kernels = lower(model, (x[:1],)), lower(model, (x[:1],))
    run_pipeline(stage, "fuse,calibrate,integerize", PassContext(calib_data=calib))
    run_pipeline(kernels, "fuse,calibrate,convert{backend=gemmlowp}", PassContext(calib_data=calib))
    targets = [n.target.rsplit(".", 1)[1] for n in kernels.nodes() if n.target and "kernels.modules" in n.target]
    assert targets.count("QCat") >= 10 and targets.count("QMean") == 1
    reference, fast = _values(stage, x), _values(kernels, x)
    assert all(torch.equal(reference[n.name], fast[n.name]) for n in stage.nodes() if n.name in fast)
    cat = next(n for n in stage.nodes() if n.target.endswith(".QCat"))  # one rounding of the values it copies
    with torch.no_grad():
        inputs = [reference[i.name] for i in stage.inputs(cat)]
        values = torch.cat([i.quant.qparams.scale * (v.float() - i.quant.qparams.zero_point)
                            for i, v in zip(stage.inputs(cat), inputs, strict=True)], 1)
    q = cat.quant.qparams
    got = q.scale * (reference[cat.name].float() - q.zero_point)
    assert float((got - values.clamp(q.scale * (0 - q.zero_point), q.scale * (255 - q.zero_point))).abs().max()) \
        <= float(q.scale) / 2 + 1e-6
    (off, on) = _deployed(kernels, x, tmp_path)
    assert off.within_1_lsb >= 0.99 and on.within_1_lsb >= 0.99


class _Averages(torch.nn.Module):
    def __init__(self, **settings):
        super().__init__()
        self.conv, self.head, self.settings = torch.nn.Conv2d(1, 8, 3), torch.nn.Conv2d(8, 4, 1), settings

    def forward(self, x):
        return self.head(torch.nn.functional.avg_pool2d(torch.relu(self.conv(x)), **self.settings))


@pytest.mark.parametrize("settings", [{"kernel_size": 3, "stride": 1, "padding": 1},
                                      {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False},
                                      {"kernel_size": 3, "stride": 2, "ceil_mode": True}])
def test_window_averages_round_once_on_the_codes(tmp_path, settings):
    from qcompile.codegen import load_model as load_emitted
    from qcompile.codegen import write_model
    from qcompile.onnx.runtime.check import check_onnx, output_scale

    torch.manual_seed(0)
    model = _Averages(**settings).eval()
    calib = list(open_data("builtin:mnist5k", limit=128, batch_size=64))
    x = next(iter(open_data("builtin:mnist5k", limit=64, batch_size=64, skip=128)))[0]
    graph = lower(model, (x[:1],))
    run_pipeline(graph, "fuse,calibrate,convert{backend=gemmlowp}", PassContext(calib_data=calib))
    (pool,) = [n for n in graph.nodes() if n.op == "avg_pool2d"]
    assert pool.target.endswith("kernels.modules.QAvgPool2d")
    values = _values(graph, x)
    q = pool.quant.qparams
    source = graph.inputs(pool)[0]
    want = torch.nn.functional.avg_pool2d(q.scale * (values[source.name].double() - q.zero_point), **settings)
    got = q.scale * (values[pool.name].double() - q.zero_point)
    assert got.shape == want.shape and float((got - want).abs().max()) <= float(q.scale) / 2 + 1e-9
    write_model(graph, tmp_path / "int8")
    emitted = load_emitted(tmp_path / "int8")
    with torch.no_grad():
        assert torch.equal(torch.jit.script(emitted)(x), emitted(x))
    (off, on) = check_onnx(export_onnx(graph, tmp_path / "model.onnx"), emitted, [x], output_scale(graph),
                           graph=graph)
    assert off.within_1_lsb >= 0.99 and on.within_1_lsb >= 0.99
