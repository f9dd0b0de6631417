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
