"""GPTQ / exhaustive rounding: exact minimisers of the layer's quadratic error, on convert's grid."""

from __future__ import annotations

import itertools

import pytest
import torch

from qcompile.data import open_data
from qcompile.diagnose.metrics import sqnr_db
from qcompile.errors import QCompileError
from qcompile.frontend.loaders import load_model
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.pipeline import PassContext, run_pipeline
from qcompile.quant.adaround import WeightGrid
from qcompile.quant.gptq import compensated_weight, gptq_codes, hessians, moments
from qcompile.quant.stats_io import save_statistics


def _grid(weight: torch.Tensor, bits: int) -> WeightGrid:
    top = 2 ** (bits - 1) - 1
    shape = (-1,) + (1,) * (weight.dim() - 1)
    scale = (weight.abs().flatten(1).amax(1) / top).double().reshape(shape)
    return WeightGrid(scale, torch.zeros_like(scale), torch.full_like(scale, -top - 1.0), torch.full_like(scale, top))


def _error(weight, grid, codes, h):
    """Per output channel: (w - q) H (w - q)^T in the weight's units, H per group."""
    groups = h.shape[0]
    d = (weight.double() - grid.values(codes).double()).reshape(groups, -1, h.shape[-1])
    return torch.einsum("gok,gkl,gol->go", d, h, d).flatten()


def _correlated(rows: int, k: int, groups: int = 1) -> torch.Tensor:
    x = torch.einsum("ngj,gjk->ngk", torch.randn(rows, groups, 4), torch.randn(groups, 4, k))
    x = x + 0.05 * torch.randn(rows, groups, k)
    return x if groups > 1 else x[:, 0]


def test_exhaustive_rounding_is_the_best_floor_or_ceiling_choice():
    """A depthwise 3x3 layer (nine weights per channel): each channel's codes are the best of all 512 choices."""
    torch.manual_seed(0)
    weight = torch.randn(6, 1, 3, 3) * torch.tensor([1.0, 8.0, 0.1, 3.0, 1.0, 2.0]).reshape(-1, 1, 1, 1)
    grid = _grid(weight, 8)
    h = hessians(_correlated(2048, 9, groups=6))
    codes = gptq_codes(weight, grid, h)
    scaled = (weight.double() / grid.scale).reshape(6, 9)
    for c in range(6):
        best = min(float(_error(weight[c:c + 1], _grid_row(grid, c), (torch.floor(scaled[c]) + torch.tensor(
            choice, dtype=torch.float64)).reshape(1, 1, 3, 3), h[c:c + 1])) for choice in
            itertools.product((0, 1), repeat=9))
        assert float(_error(weight[c:c + 1], _grid_row(grid, c), codes[c:c + 1], h[c:c + 1])) == pytest.approx(best)
    nearest = _error(weight, grid, grid.codes(weight), h)
    assert (_error(weight, grid, codes, h) <= nearest + 1e-12).all()
    assert (_error(weight, grid, codes, h) < 0.8 * nearest).all()  # measured: 0.02-0.68 of nearest


def _grid_row(grid: WeightGrid, c: int) -> WeightGrid:
    return WeightGrid(*(t[c:c + 1] for t in (grid.scale, grid.zero_point, grid.qmin, grid.qmax)))


@pytest.mark.parametrize("bits", [8, 4])
def test_column_by_column_rounding_lowers_the_output_error(bits):
    """A linear layer of 300 inputs (GPTQ's path, three blocks of columns): error well below nearest."""
    torch.manual_seed(1)
    weight = torch.randn(24, 300)
    grid = _grid(weight, bits)
    x = _correlated(4096, 300)
    codes = gptq_codes(weight, grid, hessians(x))
    assert ((codes >= grid.qmin) & (codes <= grid.qmax) & (codes == torch.round(codes))).all()
    ours = (x.double() @ (weight.double() - grid.values(codes).double()).T).pow(2).sum()
    nearest = (x.double() @ (weight.double() - grid.values(grid.codes(weight)).double()).T).pow(2).sum()
    assert ours < 0.1 * nearest  # measured: 0.0015 at 8 and at 4 bits (inputs of rank about 4)


def test_a_grouped_convolution_is_rounded_group_by_group():
    """Two groups with their own input statistics: rounding each on its own group's H gives the same codes."""
    torch.manual_seed(2)
    weight = torch.randn(8, 6, 2, 2)  # 2 groups of 4 output channels, 24 inputs each
    grid = _grid(weight, 6)
    x = _correlated(2048, 24, groups=2)
    together = gptq_codes(weight, grid, hessians(x))
    for g in range(2):
        rows = slice(4 * g, 4 * g + 4)
        alone = gptq_codes(weight[rows], _grid_slice(grid, rows), hessians(x[:, g]))
        assert torch.equal(together[rows], alone)


def _grid_slice(grid: WeightGrid, rows: slice) -> WeightGrid:
    return WeightGrid(*(t[rows] for t in (grid.scale, grid.zero_point, grid.qmin, grid.qmax)))


def test_compensated_weight_maps_the_quantized_inputs_onto_the_float_outputs():
    torch.manual_seed(3)
    weight = torch.randn(5, 16)
    x = _correlated(4096, 16)
    noisy = torch.round(x / 0.25) * 0.25  # the inputs on a coarse grid, as a quantized model's are
    compensated = compensated_weight(weight, moments(noisy), moments(x, noisy), damp=1e-6)
    before = (noisy @ weight.T - x @ weight.T).pow(2).mean()
    after = (noisy @ compensated.T - x @ weight.T).pow(2).mean()
    assert after < 0.6 * before  # measured: 0.45
    assert torch.allclose(compensated_weight(weight, moments(x), moments(x), damp=1e-6), weight, atol=1e-3)


def test_a_mismatched_hessian_is_refused():
    with pytest.raises(ValueError, match="does not match"):
        gptq_codes(torch.randn(4, 10), _grid(torch.randn(4, 10), 8), torch.eye(9)[None])


@pytest.fixture(scope="module")
def digits():
    return open_data("builtin:mnist5k", limit=128, batch_size=64)


def _lowered(name: str):
    loaded = load_model(f"zoo:{name}")
    return lower(loaded.module, loaded.example_inputs)


def test_gptq_on_the_digit_cnn_beats_round_to_nearest_at_4_bits(digits):
    held_out = next(iter(open_data("builtin:mnist5k", limit=256, batch_size=256, skip=128)))[0]
    graph = _lowered("digit_cnn")
    reference = Interpreter(graph).run(held_out)
    outputs = {}
    for pipeline in ("fuse,calibrate,convert{backend=gemmlowp weight-bits=4}",
                     "fuse,calibrate,gptq,convert{backend=gemmlowp weight-bits=4}"):
        quantized = graph.copy()
        records = run_pipeline(quantized, pipeline, PassContext(calib_data=digits))
        outputs[pipeline] = Interpreter(quantized).run(held_out)
        if "gptq" in pipeline:
            stats = next(r.result.stats for r in records if r.pass_.name == "gptq")
            assert stats["layers"] == 5 and "adarounded" in quantized.facts
            assert stats["weights mapped onto quantized inputs"].endswith(" layers")
    nearest, ours = (sqnr_db(o, reference) for o in outputs.values())
    assert ours > nearest + 3.0, (nearest, ours)  # measured: 25.1 -> 32.1 dB


def test_gptq_refuses_what_it_cannot_do(digits, tmp_path):
    graph = _lowered("digit_cnn")
    with pytest.raises(QCompileError, match="none follows it"):
        run_pipeline(graph.copy(), "fuse,calibrate,gptq", PassContext(calib_data=digits))
    with pytest.raises(QCompileError, match="damp"):
        run_pipeline(graph.copy(), "fuse,calibrate,gptq{damp=0},convert", PassContext(calib_data=digits))
    calibrated = graph.copy()
    run_pipeline(calibrated, "fuse,calibrate", PassContext(calib_data=digits))
    statistics = tmp_path / "stats.json"
    save_statistics(calibrated, statistics)
    ctx = PassContext()
    ctx.statistics_file = str(statistics)
    with pytest.raises(QCompileError, match="needs calibration data"):
        run_pipeline(graph.copy(), "fuse,load-stats,gptq,convert", ctx)
