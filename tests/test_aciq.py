"""ACIQ: the constants of spec section 2.5, the error model against Monte Carlo, and the pass."""

from __future__ import annotations

import math

import pytest
import torch

from qcompile.data import open_data
from qcompile.errors import QCompileError
from qcompile.frontend.loaders import load_model
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.pipeline import PassContext, run_pipeline
from qcompile.quant.aciq import gauss_ratio, lambert_w0, laplace_ratio, mse_gauss, mse_laplace
from qcompile.quant.config import QuantConfig

# spec section 2.5: M, Laplace two-sided, Laplace one-sided, Gauss two-sided, Gauss one-sided, MSE_L, MSE_G
TABLE = [
    (0, 1.04991, 1.86282, 0.76578, 1.23991, 1.06738, 0.44381),
    (1, 1.86282, 2.83068, 1.23991, 1.71064, 0.59964, 0.21501),
    (2, 2.83068, 3.89723, 1.71064, 2.15159, 0.28488, 0.087149),
    (3, 3.89723, 5.02864, 2.15159, 2.55914, 0.11970, 0.031429),
    (4, 5.02864, 6.20477, 2.55914, 2.93620, 0.046021, 0.010493),
    (5, 6.20477, 7.41313, 2.93620, 3.28691, 0.016572, 0.0033226),
    (6, 7.41313, 8.64562, 3.28691, 3.61511, 0.0056788, 0.0010129),
    (7, 8.64562, 9.89676, 3.61511, 3.92404, 0.0018725, 0.00030022),
    (8, 9.89676, 11.16269, 3.92404, 4.21633, 0.00059885, 0.000087078),
]


@pytest.mark.parametrize("m, lap, lap1, gau, gau1, mse_l, mse_g", TABLE)
def test_constants_table_to_four_decimals(m, lap, lap1, gau, gau1, mse_l, mse_g):
    assert laplace_ratio(m) == pytest.approx(lap, abs=5e-5)
    assert laplace_ratio(m, one_sided=True) == pytest.approx(lap1, abs=5e-5)
    assert gauss_ratio(m) == pytest.approx(gau, abs=5e-5)
    assert gauss_ratio(m, one_sided=True) == pytest.approx(gau1, abs=5e-5)
    assert mse_laplace(laplace_ratio(m), 1.0, m) == pytest.approx(mse_l, rel=1e-4)
    assert mse_gauss(gauss_ratio(m), 1.0, m) == pytest.approx(mse_g, rel=1e-4)


def test_lambert_w():
    for x in (0.0, 0.5, 3.0, 48.0, 196608.0):
        w = lambert_w0(x)
        assert w * math.exp(w) == pytest.approx(x, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("alpha", [3.0, 5.03, 8.0])
def test_monte_carlo_agrees_with_the_analytic_laplace_error(alpha):
    """Spec 2.5: 2M Laplace(0, 1) samples, 4 bits, mid-rise grid of 2^M bins over [-a, a]."""
    x = torch.distributions.Laplace(0.0, 1.0).sample((2_000_000,))  # seeded by the autouse fixture
    bins = 2**4
    step = 2 * alpha / bins
    clipped = x.clamp(-alpha, alpha - 1e-9)
    q = (torch.floor((clipped + alpha) / step) + 0.5) * step - alpha
    mc = float((q - x).pow(2).mean())
    assert mc == pytest.approx(mse_laplace(alpha, 1.0, 4), rel=0.05)  # the spec saw up to 3% at a=8


def _digit_graph(pipeline, preset="default"):
    model = load_model("zoo:digit_cnn").module
    calib = open_data("builtin:mnist5k", limit=256, batch_size=64)
    graph = lower(model, (torch.zeros(1, 1, 28, 28),))
    records = run_pipeline(graph, pipeline, PassContext(calib_data=calib, quant_config=QuantConfig.from_preset(preset)))
    return graph, records


def test_aciq_clips_inside_the_observed_range_and_convert_uses_it():
    graph, records = _digit_graph("fuse,stubs,observe,calibrate,aciq,convert")
    aciq = next(r for r in records if r.pass_.name == "aciq")
    assert aciq.result.modified and aciq.result.stats == {"laplace": 6}
    conv = graph.node("conv_layers_0")
    lo, hi = conv.quant.clip
    assert lo == 0 and 0 < hi <= float(conv.quant.stats.max)  # one-sided: after its fused ReLU
    assert conv.quant.stats.moments is not None and conv.quant.stats.moments.channels is not None
    assert graph.attrs["backend"] == "gemmlowp"  # backend=auto: the full 8-bit grid its kernels compute exactly
    assert float(conv.quant.qparams.scale) == pytest.approx(hi / 255, rel=1e-6)


def test_aciq_needs_moments_from_calibration():
    graph, _ = _digit_graph("fuse,calibrate")
    with pytest.raises(QCompileError, match="no moments"):
        run_pipeline(graph, "aciq")


def test_aciq_second_run_is_a_no_op_and_four_bit_convert_stays_on_its_grid():
    graph, _ = _digit_graph("fuse,calibrate,aciq{bits=4 prior=mix}")
    again = run_pipeline(graph, "aciq{bits=4 prior=mix}")
    assert again[0].result.modified is False
    run_pipeline(graph, "convert{backend=native weight-bits=4}")  # torch's int8 ops need a clamp after each
    clamps = graph.find(op="clamp4b")
    assert len(clamps) == 6  # every own-grid activation, kept in [0, 15] of its uint8 container
    codes: dict[str, torch.Tensor] = {}

    def hook(node, value):
        if isinstance(value, torch.Tensor) and value.is_quantized:
            codes[node.name] = value.int_repr()

    x = next(iter(open_data("builtin:mnist5k", limit=64)))[0]
    Interpreter(graph).run(x, hook=hook)
    assert all(int(codes[c.name].max()) <= 15 for c in clamps)
    weight = graph.param(graph.node("conv_layers_3"), "weight").int_repr()
    assert weight.min() >= -8 and weight.max() <= 7  # 4-bit weights in int8 containers


def test_aciq_at_eight_bits_keeps_accuracy_on_real_digits():
    data = open_data("builtin:mnist5k", limit=1000, batch_size=250)
    for pipeline in ("ptq", "fuse,calibrate,aciq,convert"):
        graph, _ = _digit_graph(pipeline)
        interpreter = Interpreter(graph)
        correct = sum(int((interpreter.run(x).argmax(1) == y).sum()) for x, y in data.labelled())
        assert correct >= 975, (pipeline, correct)


def test_per_channel_clips_follow_each_channel_and_convert_refuses_them():
    graph, records = _digit_graph("fuse,calibrate,bitalloc{budget=4 activations=true weights=false},"
                                  "aciq{bits=4 per-channel=true}")
    assert records[-1].result.stats == {"laplace per channel": 6}
    conv = graph.node("conv_layers_0")
    lo, hi = conv.quant.clip
    channels, bits = conv.quant.stats.moments.channels, conv.quant.channel_bits
    assert lo.shape == hi.shape == channels.mad.shape
    assert torch.all(lo == 0) and torch.all(hi <= channels.max + 1e-6)  # one-sided, inside each channel's range
    live = (bits > 0) & (hi < channels.max)  # channels the clip actually cut
    assert live.any()
    # spec: alpha_i = b_i * alpha_laplace+[M_i], the one-sided ACIQ optimum for the channel's own width
    expected = torch.tensor([max(float(m), 0.0) + float(b) * laplace_ratio(int(k), True)
                             for m, b, k in zip(channels.mean, channels.mad, bits, strict=True)])
    assert torch.allclose(hi[live], expected[live], rtol=1e-5)
    assert "clip=[" in graph.node("conv_layers_0").quant.describe() and "channels" in conv.quant.describe()
    graph, _ = _digit_graph("fuse,calibrate,aciq{bits=4 per-channel=true}")
    with pytest.raises(QCompileError, match="one clip range per channel"):
        run_pipeline(graph, "convert")


@pytest.mark.slow
def test_per_channel_clips_beat_per_tensor_on_real_mobilenet_v2():
    from tests.test_simulate_bitalloc import _mobilenet_setup, _sqnr

    setup = _mobilenet_setup()
    per_tensor = _sqnr(*setup, "fuse,calibrate,aciq{bits=4},simulate{bits=4}", "x86")
    per_channel = _sqnr(*setup, "fuse,calibrate,aciq{bits=4 per-channel=true},simulate{bits=4}", "x86")
    assert per_channel > per_tensor + 0.5  # measured: 1.89 -> 2.92 dB (W8A4)


def test_moments_survive_a_statistics_file_in_the_typed_and_the_older_flat_form(tmp_path):
    """calibrate's moments are a typed record; files written when they were a flat dict still load."""
    from dataclasses import asdict

    from qcompile.quant.stats_io import load_statistics, save_statistics

    model = load_model("zoo:digit_cnn").module
    calib = list(open_data("builtin:mnist5k", limit=64, batch_size=32))
    graph = lower(model, (calib[0][0][:1],))
    run_pipeline(graph, "fuse,calibrate,aciq{per-channel=true}", PassContext(calib_data=calib))
    path = save_statistics(graph, tmp_path / "typed.pt")
    content = torch.load(path, weights_only=True)
    flat = {}
    for name, entry in content["nodes"].items():  # the older layout: mean, mad, std, mean_c, ..., max_c
        moments = entry.pop("moments")
        extra = {key: moments[key] for key in ("mean", "mad", "std")}
        if moments["channels"] is not None:
            extra |= {f"{key}_c": value for key, value in moments["channels"].items()}
        flat[name] = entry | {"extra": extra}
    torch.save(content | {"nodes": flat}, tmp_path / "flat.pt")
    for file in (path, tmp_path / "flat.pt"):
        fresh = lower(model, (calib[0][0][:1],))
        run_pipeline(fresh, "fuse,stubs,observe", PassContext())
        assert load_statistics(fresh, file) > 0
        for node in graph.nodes():
            if node.quant.stats is not None and node.quant.stats.moments is not None:
                loaded = fresh.node(node.name).quant.stats.moments
                assert loaded.channels is not None
                for key, value in asdict(node.quant.stats.moments).items():
                    if key != "channels":
                        assert torch.equal(getattr(loaded, key), value)
                assert torch.equal(loaded.channels.mad, node.quant.stats.moments.channels.mad)
