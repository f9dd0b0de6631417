"""Dynamic quantization: exactly what torch.ao's quantize_dynamic computes, from the graph."""

from __future__ import annotations

import copy

import torch
from torch import nn

from qcompile.codegen import load_model, write_model
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
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
