"""Block reconstruction (``brecq``): blocks cut where one value is live, the twin's values, codes on convert's grid."""

from __future__ import annotations

import pytest
import torch
from qcompile.passes.convert import Convert

from qcompile.data import open_data
from qcompile.errors import QCompileError
from qcompile.frontend.loaders import load_model
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.pipeline import PassContext, run_pipeline
from qcompile.quant.block_reconstruction import BlockRun, blocks
from qcompile.quant.emulate import quantized_twin
from qcompile.quant.layer_walk import rounded_layers


def _lowered(name: str):
    loaded = load_model(f"zoo:{name}")
    return lower(loaded.module, loaded.example_inputs)


@pytest.fixture(scope="module")
def fashion():
    return open_data("builtin:fashion-train", limit=64, batch_size=32)


@pytest.fixture(scope="module")
def resnet20_twin(fashion):
    graph = _lowered("resnet20_fashion")
    ctx = PassContext(calib_data=fashion)
    run_pipeline(graph, "fuse,calibrate,aciq{bits=4}", ctx)
    target = Convert(weight_bits=4, backend="gemmlowp")
    _, layers = rounded_layers(graph, target)
    return graph, quantized_twin(graph, target, ctx), layers


def test_resnet20_is_cut_into_its_residual_blocks(resnet20_twin):
    _, twin, layers = resnet20_twin
    cut = blocks(twin, set(layers), min_layers=2)
    assert [len(b.layers) for b in cut] == [3, 2, 2, 3, 2, 2, 3, 2, 2, 1]
    assert [b.output for b in cut] == [f"add{s}" for s in ["", *(f"_{i}" for i in range(1, 9))]] + ["fc"]
    assert cut[0].layers == ["conv1", "layers_0_conv1", "layers_0_conv2"]
    assert cut[3].layers == ["layers_3_conv1", "layers_3_conv2", "layers_3_shortcut_0"]
    assert cut[0].inputs == [n.name for n in twin.input_nodes]
    assert all(b.inputs == [a.output] for a, b in zip(cut, cut[1:], strict=False))  # one value between
    assert sorted(name for b in cut for name in b.layers) == sorted(layers)  # every layer in one block
    # one layer per block in a chain: the stem alone, then each residual block still ends at its addition
    assert [len(b.layers) for b in blocks(twin, set(layers), min_layers=1)][:3] == [1, 2, 2]


def test_a_block_run_computes_the_twins_values(resnet20_twin, fashion):
    """With the twin's own weights and nothing dropped, a block gives the twin's value at its end, block after
    block; with every activation dropped, the block with its activation grids left out."""
    _, twin, layers = resnet20_twin
    x = next(iter(fashion))[0]
    seen = {}
    Interpreter(twin).run(x, hook=lambda node, value: seen.__setitem__(node.name, value))
    run = Interpreter(twin)
    cut = blocks(twin, set(layers), min_layers=2)
    for block in cut:
        out = BlockRun(run, block)({name: seen[name] for name in block.inputs}, {})
        assert torch.equal(out, seen[block.output])
    block = cut[1]
    grids = [n for n in block.nodes if n.op == "fake_quantize"]
    assert grids  # the block's activations are on grids
    into = {name: seen[name] for name in block.inputs}
    dropped = BlockRun(run, block)(into, {}, drop=1.0, generator=torch.Generator().manual_seed(0))
    value = dict(into)
    for node in block.nodes:  # the same nodes, each grid passing its input through
        args = [twin.params[p.target] if p.kind.value == "param" else value[p.name] for p in twin.inputs(node)]
        value[node.name] = args[0] if node in grids else run.compute(node, args)
    assert torch.equal(dropped, value[block.output])
    assert not torch.equal(dropped, seen[block.output])


def test_brecq_codes_reach_the_integer_model_and_lower_the_block_errors(fashion):
    graph = _lowered("resnet20_fashion")
    passes = "fuse,calibrate,aciq{bits=4},brecq{iterations=60 samples=64},convert{weight-bits=4 backend=gemmlowp}"
    records = run_pipeline(graph, passes, PassContext(calib_data=fashion))
    stats = next(r.result.stats for r in records if r.pass_.name == "brecq")
    assert stats["layers"] == 22 and stats["left at nearest (budget)"] == 0  # convert checked the codes
    assert stats["output error vs nearest"] not in ("-0%", "0%")
    assert float(stats["weights flipped"].rstrip("%")) > 0
    assert "adarounded" in graph.facts
    x = next(iter(fashion))[0]
    assert torch.isfinite(Interpreter(graph).run(x)).all()

    again = _lowered("resnet20_fashion")
    run_pipeline(again, passes, PassContext(calib_data=fashion))
    assert all(torch.equal(graph.params[k], again.params[k]) for k in graph.params)  # the same with the seed


def test_brecq_refuses_what_it_cannot_do(fashion):
    graph = _lowered("digit_cnn")
    with pytest.raises(QCompileError, match="none follows it"):
        run_pipeline(graph.copy(), "fuse,calibrate,brecq", PassContext(calib_data=fashion))
    with pytest.raises(QCompileError, match="drop"):
        run_pipeline(graph.copy(), "fuse,calibrate,brecq{drop=1.5},convert", PassContext(calib_data=fashion))


def test_a_spent_budget_leaves_round_to_nearest():
    digits = open_data("builtin:mnist5k", limit=64, batch_size=32)
    graph = _lowered("digit_cnn")
    records = run_pipeline(graph, "fuse,calibrate,brecq{budget=0.000001 iterations=5},convert",
                           PassContext(calib_data=digits))
    stats = next(r.result.stats for r in records if r.pass_.name == "brecq")
    assert stats["layers"] == 0 and stats["left at nearest (budget)"] == 5
