"""Float ops qcompile's emitters do not write go to ONNX as torch's own exporter writes them
(:mod:`qcompile.onnx.torch_written`); an op neither can write is refused by name, before OUT is written."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qcompile.codegen import load_model, write_model
from qcompile.errors import QCompileError
from qcompile.frontend.lower import lower
from qcompile.onnx.export import export_onnx
from qcompile.onnx.runtime.check import check_onnx
from tests.models import RowLSTM, fashion_rows, fit_on_fashion_rows
from tests.test_cli import qcompile


class Statistics(nn.Module):
    """Float ops the exporter has no emitter of its own for, each on a conv's output."""

    def __init__(self, op: str):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.op = op

    def forward(self, x):
        y = torch.relu(self.conv(x))
        if self.op == "norm":
            return y / (torch.norm(y, dim=1, keepdim=True) + 1e-6)
        if self.op == "std":
            return y.std(dim=(2, 3))
        if self.op == "cumsum":
            return torch.cumsum(y, dim=3)
        if self.op == "logsumexp":
            return torch.logsumexp(y.flatten(2), dim=2)
        if self.op == "var":
            return y.var(dim=(2, 3))
        return torch.topk(y.flatten(1), 5, dim=1).values


@pytest.mark.parametrize("op", ["norm", "std", "cumsum", "logsumexp", "var", "topk"])
def test_float_ops_export_as_torch_writes_them_with_a_dynamic_batch(op, tmp_path):
    torch.manual_seed(0)
    model = Statistics(op).eval()
    graph = lower(model, (torch.randn(1, 3, 8, 8),))
    write_model(graph, tmp_path / "model")
    path = export_onnx(graph, tmp_path / "model.onnx")
    x = torch.randn(4, 3, 8, 8)  # lowered at batch 1
    results = check_onnx(path, load_model(tmp_path / "model"), [x], None)
    assert max(r.max_error for r in results) < 1e-4
    written = [n for n in onnx.load(path).graph.node if "__torch" in n.output[0]]
    assert written, "the op was not written through torch.onnx"


def test_attention_modules_export_from_either_frontend(tmp_path):
    class Attend(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.attention(x, x, x, need_weights=False)[0]

    torch.manual_seed(0)
    model = Attend().eval()
    x = torch.randn(3, 5, 8)
    for frontend in ("fx", "export"):  # fx keeps the module whole; torch.export traces it into its operations
        path = export_onnx(lower(model, (x[:1],), frontend=frontend), tmp_path / f"{frontend}.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            assert np.abs(got - model(x).numpy()).max() < 1e-5


class RowNormTagger(nn.Module):
    """The trained row LSTM's hidden states, each scaled to unit length (``torch.norm``) before the head."""

    def __init__(self, trained: RowLSTM):
        super().__init__()
        self.lstm, self.head = trained.lstm, trained.head

    def forward(self, x):
        last = self.lstm(x)[0][:, -1]
        return self.head(8 * last / torch.norm(last, dim=1, keepdim=True).clamp_min(1e-6))


@pytest.fixture(scope="module")
def row_norm_tagger(tmp_path_factory) -> tuple:
    torch.manual_seed(0)
    model = RowNormTagger(fit_on_fashion_rows(RowLSTM(hidden=32), count=2000, epochs=1)).eval()
    root = tmp_path_factory.mktemp("tagger")
    torch.save(model.state_dict(), root / "weights.pt")
    x, _ = fashion_rows("test", 256)
    torch.save({"x": x}, root / "rows.pt")
    return root, model


@pytest.mark.parametrize("passes", ["dynamic", "fuse,calibrate,convert"])
def test_an_lstm_with_a_norm_exports_and_passes_the_check(passes, row_norm_tagger, tmp_path):
    root, model = row_norm_tagger
    out = tmp_path / "out"
    run = qcompile("tests.test_onnx_torch_written:tagger", "--weights", root / "weights.pt", "--input-shape", "1,28,28",
                   "--passes", passes, "--calib", root / "rows.pt", "--calib-samples", "128", "--export", "onnx",
                   "--check", "--no-verdict", "-o", out)
    assert run.returncode == 0, run.stderr
    ops = {n.op_type for n in onnx.load(out / "model.onnx").graph.node}
    assert "ReduceL2" in ops and ("LSTM" in ops or passes == "dynamic")  # dynamic: torch's int8 steps, unrolled
    assert "within 1 LSB" in run.stdout  # the check's table


def tagger() -> RowNormTagger:
    return RowNormTagger(RowLSTM(hidden=32))


class Gamma(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return torch.lgamma(F.relu(self.conv(x)) + 1).mean(dim=(2, 3))


def test_an_op_neither_qcompile_nor_torch_writes_is_refused_by_name(tmp_path):
    with pytest.raises(QCompileError, match=r"%lgamma: torch.lgamma is not exported to ONNX: .*aten::lgamma") as info:
        export_onnx(lower(Gamma().eval(), (torch.rand(1, 1, 8, 8),)), tmp_path / "model.onnx")
    assert "drop --export onnx" in info.value.hint
    assert not (tmp_path / "model.onnx").exists()


def test_the_cli_refuses_it_before_writing_out(tmp_path):
    out = tmp_path / "out"
    run = qcompile("tests.test_onnx_torch_written:Gamma", "--input-shape", "1,1,28,28", "--passes", "ptq", "--calib",
                   "builtin:mnist5k", "--calib-samples", "32", "--export", "onnx", "--no-verdict", "-o", out)
    assert run.returncode == 2, run.stderr
    assert "torch.lgamma is not exported to ONNX" in run.stderr and "Traceback" not in run.stderr
    assert not out.exists()
