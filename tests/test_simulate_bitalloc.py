"""Fake-quant simulation, per-channel bit allocation, and the paper's claims on the real MobileNetV2."""

from __future__ import annotations

import pytest
import torch

from qcompile.data import open_data
from qcompile.frontend.loaders import load_model
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.pipeline import PassContext, run_pipeline
from qcompile.quant.bit_allocation import allocate_bits
from qcompile.quant.config import QuantConfig
from qcompile.quant.fake import fake_quantize


def test_allocation_meets_the_budget_exactly_or_from_below():
    # the reference loop oscillates on this case and ends over budget with [4, 5]
    assert allocate_bits(torch.tensor([1.0, 2.0**1.5]), 4).tolist() in ([4, 4], [3, 5])
    alpha = torch.distributions.LogNormal(0.0, 1.0).sample((64,))
    for budget in (2.0, 4.0, 5.3, 7.9):
        bits = allocate_bits(alpha, budget)
        assert bits.float().mean() <= budget + 1e-9
        assert bits.float().mean() > budget - 1 / 64 - 1e-9  # nothing left that would still fit
        assert 0 <= bits.min() and bits.max() <= 8
    # more spread gets more bits, and a silent channel gets none
    bits = allocate_bits(torch.tensor([0.0, 1.0, 10.0]), 3)
    assert bits[0] == 0 and bits[2] >= bits[1]


def test_fake_quantize_grid_and_zero_bit_channels():
    x = torch.linspace(-2, 2, 101).reshape(1, 1, 101).expand(1, 2, 101)
    y = fake_quantize(x, torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.0]))
    assert torch.unique(y[0, 0]).numel() == 4  # 2 bits: four levels
    assert torch.all(y[0, 1] == 0)  # 0 bits: the channel becomes its lower clip


def _mobilenet_setup():
    model = load_model("zoo:mobilenet_v2").module
    calib, eval_source = open_data("builtin:photos", batch_size=16).interleaved_split()
    evaluation = torch.cat([b[0] for b in eval_source])
    with torch.no_grad():
        reference = model(evaluation)
    return model, calib, evaluation, reference


def _sqnr(model, calib, evaluation, reference, pipeline, preset):
    graph = lower(model, (evaluation[:1],))
    run_pipeline(graph, pipeline, PassContext(calib_data=calib, quant_config=QuantConfig.from_preset(preset)))
    out = Interpreter(graph).run(evaluation)
    return float(10 * torch.log10(reference.pow(2).mean() / (out - reference).pow(2).mean()))


@pytest.mark.slow
def test_paper_methods_beat_naive_on_real_mobilenet_v2():
    setup = _mobilenet_setup()
    naive_a4 = _sqnr(*setup, "fuse,calibrate,simulate{bits=4}", "default")
    aciq_a4 = _sqnr(*setup, "fuse,calibrate,aciq{bits=4},simulate{bits=4}", "default")
    assert aciq_a4 > naive_a4 + 3  # measured: -5.5 dB -> 1.6 dB (W8A4)
    naive_w4 = _sqnr(*setup, "fuse,calibrate,simulate{weight-bits=4}", "x86")
    alloc_w4 = _sqnr(*setup, "fuse,calibrate,bitalloc{budget=4},simulate{weight-bits=4}", "x86")
    assert alloc_w4 > naive_w4 + 1  # measured: 0.0 dB -> 1.7 dB (W4A8, per-channel)


def test_simulate_at_eight_bits_is_close_to_float_on_digits():
    model = load_model("zoo:digit_cnn").module
    data = open_data("builtin:mnist5k", limit=512, batch_size=128)
    graph = lower(model, (torch.zeros(1, 1, 28, 28),))
    records = run_pipeline(graph, "fuse,calibrate,bitalloc{budget=6},simulate", PassContext(calib_data=data))
    assert records[-1].result.stats == {"activations": 6, "weights": 5}
    assert graph.node("conv_layers_0").quant.weight_bits.float().mean() <= 6
    x, y = next(data.labelled())
    out = Interpreter(graph).run(x)
    with torch.no_grad():
        assert (out.argmax(1) == model(x).argmax(1)).float().mean() >= 0.97


def test_banner_correction_restores_channel_mean_and_std():
    from qcompile.passes.simulate import correct_weights

    weight = torch.randn(8, 4, 3, 3) * torch.linspace(0.1, 2, 8).view(8, 1, 1, 1) + 0.3
    flat = weight.reshape(8, -1)
    quantized = fake_quantize(weight, flat.min(1).values, flat.max(1).values, torch.full((8,), 3.0), axis=0)
    assert not torch.allclose(quantized.reshape(8, -1).mean(1), flat.mean(1), atol=1e-4)
    mean_only = correct_weights(weight, quantized, variance=False).reshape(8, -1)
    torch.testing.assert_close(mean_only.mean(1), flat.mean(1), atol=1e-5, rtol=0)
    both = correct_weights(weight, quantized, variance=True).reshape(8, -1)
    torch.testing.assert_close(both.mean(1), flat.mean(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(both.std(1), flat.std(1), atol=1e-4, rtol=1e-4)


def test_bias_correction_option_in_simulate_on_digits():
    model = load_model("zoo:digit_cnn").module
    data = open_data("builtin:mnist5k", limit=256, batch_size=128)
    graph = lower(model, (torch.zeros(1, 1, 28, 28),))
    run_pipeline(graph, "fuse,calibrate,simulate{weight-bits=3 bias-correct=mean}", PassContext(calib_data=data))
    for name in ("conv_layers_0", "fc_layers_2"):
        node = graph.node(name)
        float_weight = dict(model.named_parameters())[node.params["weight"]]
        torch.testing.assert_close(graph.param(node, "weight").reshape(len(float_weight), -1).mean(1),
                                   float_weight.detach().reshape(len(float_weight), -1).mean(1), atol=1e-5, rtol=0)
