"""Block reconstruction (``brecq``): blocks cut where one value is live, the twin's values, codes on convert's grid."""

from __future__ import annotations

import pytest
import torch
from qcompile.passes.convert import Convert, range_qparams

from qcompile.data import open_data
from qcompile.errors import QCompileError
from qcompile.frontend.loaders import load_model
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.pipeline import PassContext, run_pipeline
from qcompile.quant.block_reconstruction import BlockRun, blocks, keep_grid, learnable_grids
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
    assert [len(b.layers) for b in cut] == [1, 2, 2, 2, 3, 2, 2, 3, 2, 2, 1]
    assert [b.output for b in cut] == ["conv1", "add", *(f"add_{i}" for i in range(1, 9)), "fc"]
    assert cut[1].layers == ["layers_0_conv1", "layers_0_conv2"]
    assert cut[4].layers == ["layers_3_conv1", "layers_3_conv2", "layers_3_shortcut_0"]
    assert cut[0].inputs == [n.name for n in twin.input_nodes]
    assert all(b.inputs == [a.output] for a, b in zip(cut, cut[1:], strict=False))  # one value between
    assert sorted(name for b in cut for name in b.layers) == sorted(layers)  # every layer in one block


def test_a_chain_without_numbered_submodules_is_cut_every_min_layers():
    digits = open_data("builtin:mnist5k", limit=8, batch_size=8)
    graph = _lowered("digit_cnn")  # conv_layers.0, .3, .6, fc_layers.0, .2: each layer a numbered module
    ctx = PassContext(calib_data=digits)
    run_pipeline(graph, "fuse,calibrate", ctx)
    target = Convert(backend="gemmlowp")
    _, layers = rounded_layers(graph, target)
    twin = quantized_twin(graph, target, ctx)
    assert [b.layers for b in blocks(twin, set(layers), min_layers=2)] == [
        ["conv_layers_0", "conv_layers_3"], ["conv_layers_6"], ["fc_layers_0", "fc_layers_2"]]
    assert [len(b.layers) for b in blocks(twin, set(layers), min_layers=1)] == [1, 1, 1, 1, 1]


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
    block = cut[2]
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


def test_a_learned_activation_grid_starts_on_the_twins_grid_and_is_kept_as_convert_reads_it(resnet20_twin, fashion):
    graph, twin, layers = resnet20_twin
    graph, twin = graph.copy(), twin.copy()
    target = Convert(weight_bits=4, backend="gemmlowp")
    decided, _ = rounded_layers(graph, target)
    block = blocks(twin, set(layers), min_layers=2)[2]
    grids = {g.node.name: g for g in learnable_grids(twin, block, decided)}
    assert len(grids) == 3  # the block's input, the first conv's output, the second conv's output
    x = next(iter(fashion))[0]
    seen = {}
    Interpreter(twin).run(x, hook=lambda node, value: seen.__setitem__(node.name, value))
    run = Interpreter(twin)
    into = {name: seen[name] for name in block.inputs}
    assert torch.equal(BlockRun(run, block)(into, {}, grids=grids), seen[block.output])  # the same grids at first

    grid = grids[f"{block.layers[0]}_fq"]
    before = decided.node(grid.value).quant.qparams
    with torch.no_grad():
        grid.log_step += 0.1
    keep_grid(graph, twin, grid)
    after = range_qparams(graph.node(grid.value).quant)  # what convert will choose from the clip written
    assert torch.equal(after.zero_point, before.zero_point)
    assert torch.allclose(after.scale, before.scale * torch.exp(torch.tensor(0.1)), rtol=1e-6)
    moved = Interpreter(twin)
    assert torch.equal(BlockRun(moved, block)(into, {}), BlockRun(run, block)(into, {}, grids=grids))


def test_brecq_codes_and_grids_reach_the_integer_model(fashion):
    """The learned codes pass convert's code-for-code check, the block errors drop, the learned activation
    grids are the integer model's, and the same seed learns the same."""
    graph = _lowered("resnet20_fashion")
    calibrated = graph.copy()
    run_pipeline(calibrated, "fuse,calibrate,aciq{bits=4}", PassContext(calib_data=fashion))
    passes = "fuse,calibrate,aciq{bits=4},brecq{iterations=40 samples=64},convert{weight-bits=4 backend=gemmlowp}"
    records = run_pipeline(graph, passes, PassContext(calib_data=fashion))
    stats = next(r.result.stats for r in records if r.pass_.name == "brecq")
    assert stats["layers"] == 22 and stats["left at nearest (budget)"] == 0
    assert stats["output error vs nearest"] not in ("-0%", "0%")
    assert float(stats["weights flipped"].rstrip("%")) > 0
    assert stats["activation grids learned"] > 20
    assert "adarounded" in graph.facts
    own = {n.name: range_qparams(n.quant) for n in calibrated.nodes() if n.quant.clip is not None}
    grids = {n.name: n.quant.qparams for n in graph.nodes() if n.name in own}  # the integer model's grids
    moved = [name for name, q in grids.items() if not torch.equal(q.scale, own[name].scale)]
    assert len(moved) >= 20 and all(torch.equal(grids[name].zero_point, own[name].zero_point) for name in moved)
    x = next(iter(fashion))[0]
    assert torch.isfinite(Interpreter(graph).run(x)).all()


def test_brecq_is_deterministic_for_a_seed():
    digits = open_data("builtin:mnist5k", limit=64, batch_size=32)
    learned = []
    for _ in range(2):
        graph = _lowered("digit_cnn")
        records = run_pipeline(graph, "fuse,calibrate,brecq{iterations=30 samples=32},convert",
                               PassContext(calib_data=digits))
        stats = next(r.result.stats for r in records if r.pass_.name == "brecq")
        assert stats["layers"] == 5 and stats["activation grids learned"] == 0  # 8-bit grids: auto keeps them
        learned.append(graph)
    assert all(torch.equal(learned[0].params[k], learned[1].params[k]) for k in learned[0].params)
