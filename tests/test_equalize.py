"""``equalize``: cross-layer equalization and high-bias absorption, on real networks.

Through a ReLU (ResNet-20's blocks) equalization is exact; through a ReLU6
(MobileNetV2) the default scales only as far as each channel's folded
BatchNorm says it stays below the clamp, and the float model barely moves.
"""

from __future__ import annotations

import pytest
import torch

from qcompile.data import open_data
from qcompile.errors import PipelineError
from qcompile.frontend.loaders import load_model
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.ir import print_graph
from qcompile.pipeline import PassContext, parse_pipeline, run_pipeline
from qcompile.quant.equalization import input_ranges, output_ranges

_SHAPES = {"resnet20_fashion": (1, 1, 28, 28), "mobilenet_v2": (1, 3, 224, 224)}


def _graph(name: str, passes: str):
    graph = lower(load_model(f"zoo:{name}").module, (torch.zeros(_SHAPES[name]),))
    records = run_pipeline(graph, passes, PassContext())
    return graph, records[-1].result.stats


def _run(graph, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return Interpreter(graph).run(x)


def _sqnr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.pow(2).sum() / (reference - other).pow(2).sum()))


def _pairs(graph):
    """(first, second) for every conv whose output only the next conv reads."""
    for node in graph.nodes():
        uses = graph.uses(node)
        if node.op == "conv2d" and len(uses) == 1 and uses[0][0].op == "conv2d":
            yield node, uses[0][0]


def test_equalization_through_relu_is_exact_and_meets_the_ranges():
    x = next(iter(open_data("builtin:fashion-test", limit=64, batch_size=64)))[0]
    fused, _ = _graph("resnet20_fashion", "fuse")
    equalized, stats = _graph("resnet20_fashion", "fuse,equalize{absorb-bias=true}")
    assert stats["pairs"] == 9  # the first convolution of each of the nine blocks, into the second
    # every second conv pads, so no bias is absorbed: the function is the same up to float rounding
    assert stats["channels absorbed"] == 0
    assert _sqnr_db(_run(fused, x), _run(equalized, x)) > 90
    pairs = list(_pairs(equalized))
    assert len(pairs) == 9
    for first, second in pairs:
        r1 = output_ranges(equalized.param(first, "weight"))
        r2 = input_ranges(equalized.param(second, "weight"))
        torch.testing.assert_close(r1, r2, rtol=1e-4, atol=0)
        before = output_ranges(fused.param(fused.node(first.name), "weight"))
        assert float(r1.max() / r1.min()) < float(before.max() / before.min())


def test_relu6_pairs_scale_only_below_the_clamp_on_mobilenet_v2():
    x = next(iter(open_data("builtin:photo-crops", limit=16, batch_size=16)))[0]
    fused, _ = _graph("mobilenet_v2", "fuse")
    kept, kept_stats = _graph("mobilenet_v2", "fuse,equalize{relu6=keep}")
    equalized, stats = _graph("mobilenet_v2", "fuse,equalize")
    relu, _ = _graph("mobilenet_v2", "fuse,equalize{relu6=relu}")
    reference = _run(fused, x)
    # keep: only the projections that feed the next block's expansion directly (no ReLU6 between)
    assert kept_stats["pairs"] == 2 and _sqnr_db(reference, _run(kept, x)) > 90
    # prior (default): every expansion -> depthwise -> projection chain too, the clamps kept where they act
    assert stats["pairs"] == 36
    assert all(n.act in (None, "relu6") for n in equalized.nodes())
    spread_before, spread_after = (float(s) for s in stats["channel-range spread (median)"].replace("x", "")
                                   .split(" -> "))
    assert spread_after < spread_before / 3
    assert _sqnr_db(reference, _run(equalized, x)) > 35
    assert (_run(equalized, x).argmax(1) == reference.argmax(1)).sum() >= 15  # of 16: a near-tie may flip
    # layers: only the pairs whose first layer matches (both pairs of block 2, the expansion of block 3)
    _, chosen = _graph("mobilenet_v2", "fuse,equalize{layers=features.2.*,features.3.conv.0.0}")
    assert chosen["pairs"] == 3
    # relu: the ReLU6 becomes a ReLU, which changes the float model where the clamp acted
    assert sum(n.act == "relu" for n in relu.nodes()) == 34
    assert _sqnr_db(reference, _run(relu, x)) < _sqnr_db(reference, _run(equalized, x))


def test_high_bias_absorption_moves_bias_into_an_unpadded_next_layer():
    x = next(iter(open_data("builtin:photo-crops", limit=16, batch_size=16)))[0]
    plain, _ = _graph("mobilenet_v2", "fuse,equalize{relu6=relu}")
    absorbed, stats = _graph("mobilenet_v2", "fuse,equalize{relu6=relu absorb-bias=true}")
    assert stats["channels absorbed"] > 50
    moved = 0
    for first, second in _pairs(absorbed):
        if first.act != "relu" or any(second.attrs["padding"]):
            continue
        drop = plain.param(plain.node(first.name), "bias") - absorbed.param(first, "bias")
        assert bool((drop >= -1e-6).all())  # a bias only ever gives up a part that is >= 0
        moved += int((drop > 1e-6).sum())
        mean, std = absorbed.node(first.name).norm_prior
        assert bool((mean - 3 * std <= 1e-5).all())  # what is left would dip below 0 (the ReLU cuts it)
    assert moved == stats["channels absorbed"]
    # exact only where each ReLU'd channel stays above the moved part; MobileNetV2's channels dip below their
    # BatchNorm's mean - 3 std more often than a Gaussian would (26.5 dB here), which is why it is off by default
    assert _sqnr_db(_run(plain, x), _run(absorbed, x)) > 22


def test_equalize_is_refused_after_calibration_and_validates_its_options():
    with pytest.raises(PipelineError, match="equalize.*calibrate"):
        parse_pipeline("fuse,calibrate,equalize,convert")
    with pytest.raises(PipelineError, match="relu6"):
        parse_pipeline("fuse,equalize{relu6=clamp}")
    with pytest.raises(PipelineError, match="margin"):
        parse_pipeline("fuse,equalize{margin=0}")


def test_statistics_of_equalized_weights_are_refused_on_weights_that_are_not(tmp_path):
    from qcompile.errors import QCompileError
    from qcompile.quant.stats_io import save_statistics

    calib = [(b[0],) for b in open_data("builtin:photos", limit=16, batch_size=16)]
    graph = lower(load_model("zoo:mobilenet_v2").module, (torch.zeros(_SHAPES["mobilenet_v2"]),))
    run_pipeline(graph, "fuse,equalize,calibrate,convert", PassContext(calib_data=calib))
    stats = save_statistics(graph, tmp_path / "stats.pt")

    def reload(passes: str):
        again = lower(load_model("zoo:mobilenet_v2").module, (torch.zeros(_SHAPES["mobilenet_v2"]),))
        ctx = PassContext()
        ctx.statistics_file = stats
        run_pipeline(again, passes, ctx)
        return again

    with pytest.raises(QCompileError, match="statistics of different weights") as refused:
        reload("fuse,stubs,observe,load-stats,convert")
    assert "fuse,equalize,load-stats" in refused.value.hint
    same = reload("fuse,equalize,stubs,observe,load-stats,convert")
    assert print_graph(same) == print_graph(graph)  # every grid the same as with the data
