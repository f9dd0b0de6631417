"""A concatenation copies codes: the layers that make its inputs write its grid (:mod:`qcompile.quant.cat_grids`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qcompile.codegen import load_model, write_model
from qcompile.data import open_data
from qcompile.diagnose.metrics import sqnr_db
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.onnx.export import export_onnx
from qcompile.onnx.runtime.check import check_onnx, output_scale
from qcompile.pipeline import PassContext, run_pipeline
from qcompile.quant.qparams import qparams_from_range
from tests.models import ConvBnRelu, randomize_batch_norm


class Branches(nn.Module):
    """An inception-style block on MNIST digits: three branches of one stem, concatenated, then a head.
    The depthwise branch has no ReLU, so the cat's grid holds negative values too."""

    def __init__(self, gate: bool = False):
        super().__init__()
        self.stem = ConvBnRelu(1, 8)
        self.wide = nn.Conv2d(8, 8, 1)
        self.deep = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.gate = gate
        self.head = nn.Conv2d(24, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.stem(x)
        third = torch.sigmoid(self.depthwise(y)) if self.gate else self.depthwise(y)
        z = F.relu(self.head(torch.cat([F.relu(self.wide(y)), self.deep(y), third], 1)))
        return self.fc(F.adaptive_avg_pool2d(z, 1).flatten(1))


def _digits(count: int, skip: int = 0) -> list[tuple[torch.Tensor, ...]]:
    return list(open_data("builtin:mnist5k", limit=count, batch_size=64, skip=skip))


def _compiled(model: nn.Module, backend: str):
    calib = _digits(128)
    graph = lower(model, (calib[0][0][:1],))
    records = run_pipeline(graph, f"fuse,calibrate,convert{{backend={backend}}}", PassContext(calib_data=calib))
    return graph, records[-1].result.stats


@pytest.mark.parametrize("backend", ["native", "gemmlowp"])
def test_a_cat_copies_the_codes_of_the_layers_that_make_its_inputs(tmp_path, backend):
    torch.manual_seed(0)
    model = randomize_batch_norm(Branches()).eval()
    graph, counts = _compiled(model, backend)
    (cat,) = [n for n in graph.nodes() if n.op == "cat"]
    assert counts["cats on their inputs' grid"] == 1
    makers = graph.inputs(cat)
    assert len(makers) == 3 and {m.op for m in makers} == {"conv2d"}
    assert all(cat.quant.qparams.same_grid(m.quant.qparams) for m in makers)
    # the grid is the cat's own, from its calibration over everything it copies
    own = qparams_from_range(cat.quant.stats.lo, cat.quant.stats.hi, cat.quant.observer)
    assert own.same_grid(cat.quant.qparams) and int(own.zero_point) > 0
    if backend == "gemmlowp":  # a plain torch.cat of uint8 codes
        assert cat.target == "torch.cat" and str(cat.type).startswith("u8")
    write_model(graph, tmp_path / "int8")
    emitted = load_model(tmp_path / "int8")
    x = _digits(64, skip=128)[0][0]
    with torch.no_grad():
        assert torch.equal(emitted(x), Interpreter(graph).run(x))
        assert sqnr_db(emitted(x), model(x)) > 30
    (off, on) = check_onnx(export_onnx(graph, tmp_path / "model.onnx"), emitted, [x], output_scale(graph),
                           graph=graph)
    assert off.within_1_lsb == on.within_1_lsb == 1.0


def test_an_input_on_a_fixed_grid_keeps_the_cat_requantizing():
    torch.manual_seed(0)
    graph, counts = _compiled(randomize_batch_norm(Branches(gate=True)).eval(), "native")
    (cat,) = [n for n in graph.nodes() if n.op == "cat"]
    sigmoid = next(n for n in graph.inputs(cat) if n.op == "sigmoid")
    assert "cats on their inputs' grid" not in counts
    assert float(sigmoid.quant.qparams.scale) == 1 / 256  # [0, 1] over 256 codes, whatever the cat's range
    assert not cat.quant.qparams.same_grid(sigmoid.quant.qparams)


def test_ghostnet_is_as_accurate_as_torch_ao_fx():
    """GhostNet concatenates a conv's output with a depthwise conv of it in each of its 32 ghost modules:
    the one timm architecture whose SQNR was more than 0.5 dB under torch.ao FX's (timm table 1) while
    each cat requantized."""
    import timm  # a test dependency (pyproject's test extra)

    from tests.torchao_reference import fx_quantize

    torch.manual_seed(0)
    model = randomize_batch_norm(timm.create_model("ghostnet_100", pretrained=False).eval())
    photos = [b[0] for b in open_data("builtin:photos", limit=24, batch_size=8)]
    calib, x = [(b,) for b in photos[:2]], photos[2]
    graph = lower(model, (x[:1],))
    run_pipeline(graph, "fuse,calibrate,convert", PassContext(calib_data=calib))
    cats = [n for n in graph.nodes() if n.op == "cat"]
    assert len(cats) == 32 and all(all(c.quant.qparams.same_grid(i.quant.qparams) for i in graph.inputs(c))
                                   for c in cats)
    emitted = Interpreter(graph)
    with torch.no_grad():
        want = model(x)
        ours, theirs = sqnr_db(emitted.run(x), want), sqnr_db(fx_quantize(model, calib, "x86")(x), want)
    assert ours >= theirs - 0.5, (ours, theirs)
