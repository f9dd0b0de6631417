"""Observers, qparams and quantization configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.ao.quantization import observer as ao

from qcompile.errors import QCompileError
from qcompile.ir.quant_types import ObserverSpec
from qcompile.quant.config import PRESETS, QuantConfig, load_quant_config
from qcompile.quant.observers import kl_threshold, l2_optimal_range, make_observer
from qcompile.quant.qparams import qparams_from_range


def _batches(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 8, 5, 5, generator=g) * (1 + i / 3) + 0.2 for i in range(n)]


@pytest.mark.parametrize("spec, reference", [
    (ObserverSpec("minmax", reduce_range=True), lambda: ao.MinMaxObserver(quant_min=0, quant_max=127)),
    (ObserverSpec("minmax", dtype="int8", symmetric=True),
     lambda: ao.MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)),
    (ObserverSpec("minmax", dtype="int8", symmetric=True, per_channel=True, axis=1),
     lambda: ao.PerChannelMinMaxObserver(ch_axis=1, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)),
    (ObserverSpec("moving_average", reduce_range=True),
     lambda: ao.MovingAverageMinMaxObserver(quant_min=0, quant_max=127)),
])
def test_min_max_qparams_match_torch_ao_exactly(spec, reference):
    ours, theirs = make_observer(spec), reference()
    for batch in _batches():
        ours.update(batch)
        theirs(batch)
    stats = ours.stats()
    q = qparams_from_range(stats.lo, stats.hi, spec, spec.axis if spec.per_channel else None)
    scale, zero_point = theirs.calculate_qparams()
    assert torch.equal(q.scale.reshape(-1), scale.reshape(-1))
    assert torch.equal(q.zero_point.reshape(-1), zero_point.reshape(-1).long())


def test_histogram_range_beats_minmax_on_heavy_tails():
    data = torch.distributions.Laplace(0.0, 1.0).sample((200_000,))
    spec = ObserverSpec("histogram")
    hist, minmax = make_observer(spec), make_observer(ObserverSpec("minmax"))
    for chunk in data.split(20_000):
        hist.update(chunk)
        minmax.update(chunk)

    def mse(stats):
        q = qparams_from_range(stats.lo, stats.hi, spec)
        x = torch.fake_quantize_per_tensor_affine(data, float(q.scale), int(q.zero_point), 0, 255)
        return float((x - data).pow(2).mean())

    assert hist.stats().hi < minmax.stats().hi  # it clips the tail
    assert mse(hist.stats()) < 0.9 * mse(minmax.stats())


def test_l2_search_matches_brute_force():
    rng = np.random.default_rng(0)
    values = rng.laplace(size=50_000)
    hist, edges = np.histogram(values, bins=64)
    a, b = l2_optimal_range(hist.astype(float), edges[0], edges[-1], (0, 15), candidates=64)
    centers = (edges[:-1] + edges[1:]) / 2

    def cost(lo, hi):
        step = (hi - lo) / 15
        clipped = np.clip(centers, lo, hi)
        inside = (centers >= lo) & (centers <= hi)
        return float(np.sum(hist * ((centers - clipped) ** 2 + inside * step**2 / 12)))

    best = min(cost(min(lo, 0), max(hi, 0)) for lo in edges for hi in edges if lo <= 0 <= hi)
    assert cost(a, b) <= best * 1.0001


def test_histogram_rebins_when_the_range_grows():
    obs = make_observer(ObserverSpec("histogram", bins=128))
    obs.update(torch.linspace(-1, 1, 1000))
    narrow_width = obs.width
    obs.update(torch.linspace(-4, 4, 1000))
    assert obs.width > narrow_width
    assert obs.hist.sum() == 2000
    assert obs.lo_edge <= -4.0 and 4.0 < obs.hi_edge <= 4.0 + obs.width
    assert 128 <= len(obs.hist) <= 256  # between bins and twice bins


@pytest.mark.parametrize("kind", ["histogram", "percentile", "entropy"])
def test_histogram_merges_exactly_whatever_the_batch_order(kind):
    """Aligned power-of-two bins: the result depends on the samples only, not on their order or grouping."""
    batches = _batches(8)
    one = make_observer(ObserverSpec(kind, bins=256))
    for batch in batches:
        one.update(batch)
    shuffled = make_observer(ObserverSpec(kind, bins=256))
    for batch in reversed(batches):
        shuffled.update(batch)
    whole = make_observer(ObserverSpec(kind, bins=256))
    whole.update(torch.cat(batches))
    for other in (shuffled, whole):
        assert torch.equal(other.hist, one.hist) and other.exponent == one.exponent
        assert torch.equal(other.stats().lo, one.stats().lo) and torch.equal(other.stats().hi, one.stats().hi)


def test_histogram_range_stays_inside_the_data():
    obs = make_observer(ObserverSpec("histogram", bins=64))
    obs.update(torch.rand(10_000) * 3 + 0.5)  # all positive, far from bin edges
    stats = obs.stats()
    assert stats.lo == 0 and 3.0 < stats.hi <= float(obs.max)


def test_percentile_and_entropy_ranges_are_inside_the_data():
    data = torch.distributions.Laplace(0.0, 1.0).sample((100_000,))
    for kind in ("percentile", "entropy"):
        obs = make_observer(ObserverSpec(kind))
        obs.update(data)
        stats = obs.stats()
        assert data.min() <= stats.lo < 0 < stats.hi < data.max()
    relu = torch.relu(data)
    obs = make_observer(ObserverSpec("entropy"))
    obs.update(relu)
    assert obs.stats().lo == 0


def test_kl_threshold_keeps_everything_for_a_uniform_distribution():
    assert kl_threshold(np.ones(2048), 1.0, 128) == pytest.approx(1.0)


def test_per_channel_needs_minmax():
    with pytest.raises(ValueError, match="per-tensor"):
        make_observer(ObserverSpec("histogram", per_channel=True))


def test_presets_match_torch_ao_defaults():
    default = PRESETS["default"][0]
    assert default.activation.quant_range == (0, 127) and not default.activation.symmetric
    assert default.weight.quant_range == (-128, 127) and default.weight.symmetric
    x86 = PRESETS["x86"][0]
    assert x86.activation.kind == "histogram" and x86.weight.per_channel
    assert PRESETS["qnnpack"][1] == "qnnpack" and PRESETS["qnnpack"][0].activation.quant_range == (0, 255)


def test_config_file_overrides_and_skips(tmp_path):
    path = tmp_path / "q.toml"
    path.write_text('preset = "default"\nskip = ["fc"]\n'
                    '[[override]]\nmatch = "layer1.*"\nactivation = { kind = "histogram" }\n')
    config = load_quant_config(path, skip=["op:hardswish"])
    assert config.preset == "default" and config.skip == ["fc", "op:hardswish"]
    pattern, qconfig = config.overrides[0]
    assert pattern == "layer1.*" and qconfig.activation.kind == "histogram"
    assert qconfig.weight == PRESETS["default"][0].weight


@pytest.mark.parametrize("written, meant", [("quint8", "uint8"), ("qint8", "int8"), ("int8", "int8")])
def test_config_files_may_name_containers_as_torch_does(tmp_path, written, meant):
    path = tmp_path / "q.toml"
    path.write_text(f'[[override]]\nmatch = "a"\nactivation = {{ dtype = "{written}", symmetric = true }}\n')
    assert load_quant_config(path).overrides[0][1].activation.dtype == meant


@pytest.mark.parametrize("text, message", [
    ('preset = "x68"', "unknown preset 'x68'"),
    ('[[override]]\nmatch = "a"\nactivation = {dtype = "quint4"}', "unknown dtype 'quint4'; choose uint8 or int8"),
    ('presets = "x86"', "unknown keys"),
    ('[[override]]\nactivation = {kind = "minmax"}', "no 'match'"),
    ('[[override]]\nmatch = "a"\nactivation = {kind = "median"}', "unknown observer kind"),
    ('[[override]]\nmatch = "a"\nweight = {bitz = 4}', "unknown observer settings"),
    ('preset = ', "not valid TOML"),
])
def test_bad_config_files(tmp_path, text, message):
    path = tmp_path / "q.toml"
    path.write_text(text)
    with pytest.raises(QCompileError, match=message):
        load_quant_config(path)


def test_default_config_is_x86():
    assert QuantConfig().preset == "x86" and load_quant_config().preset == "x86"
