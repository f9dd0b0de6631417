"""Empirical bias correction (Nagel et al.): each layer's channel means come back to float's."""

from __future__ import annotations

import pytest
import torch
from qcompile.passes.bias_correct import channel_means

from qcompile.data import open_data
from qcompile.errors import QCompileError
from qcompile.frontend.loaders import load_model
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.ir.node import NodeKind
from qcompile.pipeline import PassContext, run_pipeline
from qcompile.quant.config import QuantConfig


def _layer_means(graph, x):
    means = {}

    def collect(node, value):
        if node.kind == NodeKind.MODULE and node.op in ("conv2d", "linear"):
            means[node.name] = channel_means(node, value)

    Interpreter(graph).run(x, edit=collect)
    return means


def _digits(pipeline, samples=128):
    calib = open_data("builtin:mnist5k", limit=samples, batch_size=64)
    graph = lower(load_model("zoo:digit_cnn").module, (torch.zeros(1, 1, 28, 28),))
    records = run_pipeline(graph, pipeline, PassContext(calib_data=calib, quant_config=QuantConfig.from_preset("x86")))
    return graph, records, torch.cat([b[0] for b in calib])


def test_corrected_layers_keep_the_float_channel_means():
    reference, _, x = _digits("fuse")
    float_means = _layer_means(reference, x)
    plain, _, _ = _digits("fuse,calibrate,simulate{weight-bits=3}")
    corrected, records, _ = _digits("fuse,calibrate,bias-correct{samples=128},simulate{weight-bits=3}")
    stats = next(r.result.stats for r in records if r.pass_.name == "bias-correct")
    assert stats["layers"] == len(float_means) == 5  # four convs and the classifier
    before, after = _layer_means(plain, x), _layer_means(corrected, x)
    for name, mean in float_means.items():
        scale = mean.abs().max()
        # measured on the same samples, every channel's mean is float's again, layer after layer
        assert torch.allclose(after[name], mean, atol=1e-4 * float(scale)), name
    worst_before = max(float((before[n] - m).abs().max()) for n, m in float_means.items())
    assert worst_before > 100 * max(float((after[n] - m).abs().max()) for n, m in float_means.items())


def test_the_shift_is_subtracted_from_the_bias():
    # AIMET's reference case: float outputs 0..11, quantized 1..12 -> bias 10 becomes 9
    graph, _, x = _digits("fuse,calibrate")
    before = {n.name: graph.param(n, "bias").clone() for n in graph.nodes() if "bias" in n.params}
    float_means = _layer_means(graph, x)
    run_pipeline(graph, "bias-correct{samples=128},simulate{weight-bits=3}",
                 PassContext(calib_data=open_data("builtin:mnist5k", limit=128, batch_size=64)))
    first = "conv_layers_0"
    twin_means = float_means[first] + (before[first] - graph.param(graph.node(first), "bias"))
    quantized_first = _layer_means(_digits("fuse,calibrate,simulate{weight-bits=3}")[0], x)[first]
    assert torch.allclose(twin_means, quantized_first, atol=1e-5)


def test_bias_correction_needs_a_quantizing_pass_after_it():
    with pytest.raises(QCompileError, match="none follows"):
        _digits("fuse,calibrate,bias-correct")


@pytest.mark.slow
def test_bias_correction_lifts_the_integer_model_at_three_bits():
    test = open_data("builtin:fashion-test", limit=2000, batch_size=500)
    model = load_model("zoo:resnet20_fashion").module
    accuracy = {}
    for pipeline in ("fuse,calibrate,convert{weight-bits=3}", "fuse,calibrate,bias-correct,convert{weight-bits=3}"):
        graph = lower(model, (torch.zeros(1, 1, 28, 28),))
        calib = open_data("builtin:fashion-train", limit=512, batch_size=128)
        run_pipeline(graph, pipeline, PassContext(calib_data=calib, quant_config=QuantConfig.from_preset("x86")))
        interpreter = Interpreter(graph)
        accuracy[pipeline] = sum(int((interpreter.run(x).argmax(1) == y).sum()) for x, y in test.labelled()) / 2000
    plain, corrected = accuracy.values()
    assert corrected >= plain + 0.005, accuracy  # measured: 89.20% -> 90.65% (float 91.55%)
