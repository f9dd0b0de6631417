"""Dynamic quantization: exactly what torch.ao's quantize_dynamic computes, from the graph."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from qcompile.codegen import load_model, write_model
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.ir.node import NodeKind
from qcompile.pipeline import run_pipeline


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        self.gru = nn.GRU(32, 32, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(32, 64), nn.Linear(64, 5)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, _ = self.gru(y)
        return self.fc2(torch.relu(self.fc1(y[:, -1])))


def test_matches_quantize_dynamic_and_round_trips(tmp_path):
    model = Recurrent().eval()
    x = torch.randn(3, 7, 16)
    graph = lower(model, (x,))
    records = run_pipeline(graph, "dynamic")
    assert records[0].result.stats == {"lstm": 1, "gru": 1, "linear": 2}
    assert {n.quant.mode for n in graph.nodes() if n.op in ("lstm", "gru", "linear")} == {"dynamic"}
    ours = Interpreter(graph).run(x)
    reference = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear, nn.LSTM, nn.GRU})
    torch.testing.assert_close(ours, reference(x), rtol=0, atol=0)
    write_model(graph, tmp_path)
    torch.testing.assert_close(load_model(tmp_path)(x), ours, rtol=0, atol=0)
    float_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert (tmp_path / "weights.pt").stat().st_size < 0.45 * float_bytes


class _Sequence(nn.Module):
    """A recurrent layer's output sequence alone."""

    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


def test_recurrent_layers_without_biases_get_zero_ones(tmp_path):
    """torch.ao's int8 LSTM / GRU require biases (its quantize_dynamic fails on bias=False); zeros change nothing."""
    from qcompile.onnx.export import export_onnx
    from qcompile.onnx.runtime.check import check_onnx

    torch.manual_seed(0)
    model = _Sequence(nn.LSTM(16, 32, bias=False, num_layers=2, bidirectional=True)).eval()
    x = torch.randn(7, 3, 16)
    graph = lower(model, (x,))
    assert run_pipeline(graph, "dynamic")[0].result.stats == {"lstm": 1}
    lstm = graph.find(op="lstm")[0]
    assert lstm.attrs["bias"] and sorted(k for k in lstm.params if k.startswith("bias")) == sorted(
        f"bias_{kind}_l{layer}{suffix}" for kind in ("hh", "ih") for layer in (0, 1) for suffix in ("", "_reverse"))
    write_model(graph, tmp_path / "model")
    emitted = load_model(tmp_path / "model")
    error = float((emitted(x) - model(x)).abs().max())
    assert 0 < error < 0.05
    path = export_onnx(graph, tmp_path / "model.onnx")
    assert all(r.max_error < 1e-5 for r in check_onnx(path, emitted, [x], None, graph=graph))


def test_fused_linear_relu_and_option_subset():
    model = Recurrent().eval()
    x = torch.randn(2, 5, 16)
    graph = lower(model, (x,))
    records = run_pipeline(graph, "fuse,dynamic{ops=linear per-channel=true}")
    assert records[-1].result.stats == {"linear": 2}
    assert graph.node("fc1").target == "torch.ao.nn.intrinsic.quantized.dynamic.LinearReLU"
    assert graph.node("lstm").target == "torch.nn.LSTM"
    assert graph.node("fc2").quant.weight_qparams.per_channel
    error = (Interpreter(graph).run(x) - model(x)).abs().max()
    assert 0 < error < 0.05


class Bag(nn.Module):
    """Token ids -> an embedding table (as an nn module, which torch.fx keeps) -> mean -> linear."""

    def __init__(self, tied: bool = False):
        super().__init__()
        self.tokens = nn.Embedding(500, 32)
        self.fc = nn.Linear(32, 4)
        self.out = nn.Linear(32, 500, bias=False)
        if tied:
            self.out.weight = self.tokens.weight

    def forward(self, ids):
        pooled = self.tokens(ids).mean(1)
        return self.fc(pooled), self.out(pooled)


def test_embedding_tables_as_torch_ao_quantizes_them_and_a_quarter_of_the_size(tmp_path):
    from torch.ao.quantization import default_dynamic_qconfig, float_qparams_weight_only_qconfig

    torch.manual_seed(0)
    model = Bag().eval()
    ids = torch.randint(0, 500, (6, 9), generator=torch.Generator().manual_seed(1))
    graph = lower(model, (ids,))
    records = run_pipeline(graph, "dynamic")
    assert records[0].result.stats == {"embedding": 1, "linear": 2}
    table = graph.param(graph.node("tokens"), "weight")
    assert table.qscheme() == torch.per_channel_affine_float_qparams
    step = table.q_per_channel_scales()[:, None]
    assert bool(((table.dequantize() - model.tokens.weight).abs() <= step / 2 + 1e-6).all())  # half a step per row
    reference = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(model), {nn.Embedding: float_qparams_weight_only_qconfig, nn.Linear: default_dynamic_qconfig})
    ours = Interpreter(graph).run(ids)
    for got, want in zip(ours, reference(ids), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    write_model(graph, tmp_path / "int8")  # the saved table must own its row scales (see codegen's _owned)
    for got, want in zip(load_model(tmp_path / "int8")(ids), ours, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    plain = lower(model, (ids,))
    run_pipeline(plain, "dynamic{ops=linear}")
    assert plain.node("tokens").quant.mode is None
    write_model(plain, tmp_path / "linears")
    saved = [(tmp_path / d / "weights.pt").stat().st_size for d in ("linears", "int8")]
    assert saved[1] < 0.55 * saved[0]  # the 500 x 32 table: 64 KB in float, 16 KB of codes + 4 KB of row grids


def test_a_tied_table_is_quantized_once_per_reader():
    torch.manual_seed(0)
    ids = torch.randint(0, 500, (2, 5))
    tied = Bag(tied=True).eval()
    graph = lower(tied, (ids,))
    run_pipeline(graph, "dynamic")
    table, projection = graph.param(graph.node("tokens"), "weight"), graph.param(graph.node("out"), "weight")
    assert (table.dtype, projection.dtype) == (torch.quint8, torch.qint8)  # each reader its own int8 copy
    assert not any(p.dtype == torch.float32 and p.shape == (500, 32) for p in graph.params.values())
    with torch.no_grad():
        for got, want in zip(Interpreter(graph).run(ids), tied(ids), strict=True):
            assert float((got - want).abs().max()) < 0.05 * float(want.abs().max())


class Recommender(nn.Module):
    """Bags of item ids -> an EmbeddingBag -> a linear score."""

    def __init__(self, mode: str):
        super().__init__()
        self.items = nn.EmbeddingBag(2000, 32, mode=mode)
        self.score = nn.Linear(32, 1)

    def forward(self, ids):
        return self.score(self.items(ids))


def test_sum_embedding_bags_as_torch_ao_quantizes_them_and_export_to_onnx(tmp_path):
    from torch.ao.quantization import default_dynamic_qconfig, float_qparams_weight_only_qconfig

    from qcompile.onnx.export import export_onnx
    from qcompile.onnx.runtime.check import check_onnx

    torch.manual_seed(0)
    model = Recommender("sum").eval()
    ids = torch.randint(0, 2000, (8, 12), generator=torch.Generator().manual_seed(1))
    graph = lower(model, (ids,))
    assert graph.node("items").target == "torch.nn.EmbeddingBag"  # a module, not traced through
    assert run_pipeline(graph, "dynamic")[0].result.stats == {"embedding_bag": 1, "linear": 1}
    reference = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(model), {nn.EmbeddingBag: float_qparams_weight_only_qconfig, nn.Linear: default_dynamic_qconfig})
    torch.testing.assert_close(Interpreter(graph).run(ids), reference(ids), rtol=0, atol=0)
    write_model(graph, tmp_path / "int8")
    emitted = load_model(tmp_path / "int8")
    torch.testing.assert_close(emitted(ids), reference(ids), rtol=0, atol=0)
    float_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert (tmp_path / "int8" / "weights.pt").stat().st_size < 0.4 * float_bytes
    path = export_onnx(graph, tmp_path / "model.onnx")
    other = torch.randint(0, 2000, (5, 12))  # another number of bags
    assert all(r.max_error < 1e-5 for r in check_onnx(path, emitted, [other], None, graph=graph))


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_mean_and_max_embedding_bags_keep_their_mode_where_torch_ao_would_sum_them(tmp_path, mode):
    from torch.ao.quantization import float_qparams_weight_only_qconfig

    from qcompile.onnx.export import export_onnx
    from qcompile.onnx.runtime.check import check_onnx

    torch.manual_seed(0)
    model = Recommender(mode).eval()
    ids = torch.randint(0, 2000, (4, 6))
    graph = lower(model, (ids,))
    run_pipeline(graph, "dynamic{ops=embedding_bag}")
    node = graph.node("items")
    assert node.quant.mode == "dynamic" and node.target == "qcompile.nn.int8_bags.Int8EmbeddingBag"
    table = graph.params[node.params["weight"]]
    dequantized = torch.nn.functional.embedding_bag(ids, table.dequantize(), mode=mode)
    torch.testing.assert_close(model.items.weight, table.dequantize(), atol=0.02, rtol=0)  # half a step
    int8 = Interpreter(graph)
    with torch.no_grad():  # the bag in its own mode over the int8 rows, then the float linear
        torch.testing.assert_close(int8.run(ids), model.score(dequantized), atol=1e-5, rtol=0)
    write_model(graph, tmp_path / "int8")
    emitted = load_model(tmp_path / "int8")
    torch.testing.assert_close(emitted(ids), int8.run(ids), rtol=0, atol=0)
    torch.testing.assert_close(torch.jit.script(emitted)(ids), emitted(ids), rtol=0, atol=0)  # deployable
    other = torch.randint(0, 2000, (5, 6))
    path = export_onnx(graph, tmp_path / "model.onnx")
    assert all(r.max_error < 1e-5 for r in check_onnx(path, emitted, [other], None, graph=graph))
    # what torch.ao's quantize_dynamic does with the same bag in torch 2.14: an int8 bag that sums
    theirs = torch.ao.quantization.quantize_dynamic(nn.Sequential(copy.deepcopy(model.items)),
                                                     {nn.EmbeddingBag: float_qparams_weight_only_qconfig})
    summed = torch.nn.functional.embedding_bag(ids, table.dequantize(), mode="sum")
    torch.testing.assert_close(theirs(ids), summed, atol=1e-5, rtol=0)
    assert not torch.allclose(theirs(ids), dequantized, atol=0.05)


class OffsetBags(nn.Module):
    """Bags of any length: 1-D ids, the offsets where bags start, optional per-id weights (sum mode)."""

    def __init__(self, mode: str, include_last_offset: bool, weighted: bool):
        super().__init__()
        self.items = nn.EmbeddingBag(300, 8, mode=mode, include_last_offset=include_last_offset)
        self.weighted = weighted

    def forward(self, ids, offsets, weights):
        return self.items(ids, offsets, per_sample_weights=weights if self.weighted else None)


@pytest.mark.parametrize("mode, include_last_offset, weighted", [
    ("sum", False, False), ("sum", True, True), ("mean", False, False), ("mean", True, False), ("max", False, False),
    ("max", True, False)])
def test_embedding_bags_given_offsets_export_as_a_scatter_into_bags(tmp_path, mode, include_last_offset, weighted):
    from qcompile.onnx.export import export_onnx
    from qcompile.onnx.runtime.check import check_onnx

    torch.manual_seed(0)
    model = OffsetBags(mode, include_last_offset, weighted).eval()
    ends = [20] if include_last_offset else []
    example = (torch.randint(0, 300, (20,)), torch.tensor([0, 3, 3, 9, *ends]), torch.rand(20))
    # another count of ids, an empty first bag and an empty bag inside
    other = (torch.randint(0, 300, (31,)), torch.tensor([0, 0, 7, 7, 30, *([31] if ends else [])]), torch.rand(31))
    for passes in ("fuse", "dynamic"):
        graph = lower(model, example)
        run_pipeline(graph, passes)
        assert (graph.node("items").quant.mode == "dynamic") == (passes == "dynamic")
        write_model(graph, tmp_path / passes)
        path = export_onnx(graph, tmp_path / f"{passes}.onnx")
        emitted = load_model(tmp_path / passes)
        assert all(r.max_error < 1e-5 for r in check_onnx(path, emitted, [other], None, graph=graph))
        with torch.no_grad():
            empty = emitted(*other)[[0, 2]]
        assert not empty.any()  # empty bags are zeros, in torch and (checked above) in the file


class NormedTables(nn.Module):
    """An embedding and a max bag whose rows torch rescales to norm 1 as it reads them (``max_norm``)."""

    def __init__(self):
        super().__init__()
        self.tokens = nn.Embedding(50, 8, max_norm=1.0)
        self.bag = nn.EmbeddingBag(50, 8, mode="max", max_norm=1.0, norm_type=1.0)

    def forward(self, ids):
        return self.tokens(ids).flatten(1), self.bag(ids)


def test_max_norm_tables_are_renormalized_once_for_int8_and_for_onnx(tmp_path):
    from qcompile.onnx.export import export_onnx
    from qcompile.onnx.runtime.check import check_onnx
    from qcompile.pipeline import PassContext

    torch.manual_seed(0)
    ids, other = torch.randint(0, 50, (3, 5)), torch.randint(0, 50, (4, 5))
    for passes in ("fuse", "dynamic"):
        model = NormedTables().eval()
        graph = lower(model, (ids,))
        ctx = PassContext()
        run_pipeline(graph, passes, ctx)
        write_model(graph, tmp_path / passes)
        emitted = load_model(tmp_path / passes)
        path = export_onnx(graph, tmp_path / f"{passes}.onnx")
        assert all(r.max_error < 1e-5 for r in check_onnx(path, emitted, [other], None, graph=graph))
        with torch.no_grad():
            want = model(other)  # float torch renormalizes the rows it reads, in place
        for got, reference in zip(emitted(other), want, strict=True):
            torch.testing.assert_close(got, reference, atol=1e-5 if passes == "fuse" else 0.01, rtol=0)
        if passes == "dynamic":
            assert [n.quant.mode for n in graph.find(kind=NodeKind.MODULE)] == ["dynamic", "dynamic"]
            assert sum("max_norm applied to every row" in m for _, m in ctx.explanations) == 2
            tokens = graph.param(graph.node("tokens"), "weight").dequantize()
            assert float(tokens.norm(dim=1).max()) < 1.0 + 0.01  # the int8 rows are the renormalized ones
