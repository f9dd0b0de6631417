"""Models written in timm's style: shape asserts in forward, batch norm called as a function, split.

The small modules here reproduce what timm's layers do (``BatchNormAct2d``
asserts the rank and calls ``F.batch_norm`` with its own statistics;
MixNet's mixed convolution splits the channels); the last tests run real timm
architectures (random weights), as a user would. ``benchmarks/timm_zoo.py``
runs the broad sweep.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qcompile.codegen import load_model, write_model
from qcompile.diagnose.metrics import sqnr_db
from qcompile.errors import LoweringError
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.onnx.export import export_onnx
from qcompile.onnx.runtime.check import check_onnx, output_scale
from qcompile.onnx.runtime.session import OnnxModel
from qcompile.pipeline import PassContext, run_pipeline
from qcompile.quant.config import QuantConfig
from tests.models import randomize_batch_norm


class BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d, in short: a BatchNorm2d subclass whose forward asserts and calls F.batch_norm."""

    def __init__(self, channels: int):
        super().__init__(channels)
        self.act = nn.SiLU()

    def forward(self, x):
        torch._assert(x.ndim == 4, f"expected 4D input (got {x.ndim}D input)")
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.1, self.eps)
        return self.act(x)


class MixedConv(nn.Module):
    """MixNet's mixed convolution: split the channels, a kernel size per part, concatenate."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = BatchNormAct(8)
        self.convs = nn.ModuleList([nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(5, 5, 5, padding=2)])
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.bn(self.stem(x))
        parts = torch.split(x, [3, 5], dim=1)
        x = torch.cat([self.convs[0](parts[0]), self.convs[1](parts[1])], dim=1)
        return self.head(x.mean((2, 3)))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return randomize_batch_norm(MixedConv())


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_split_exports_to_onnx_from_either_frontend(tmp_path, frontend):
    model = _model()
    x = torch.randn(2, 3, 16, 16)
    graph = lower(model, (x[:1],), frontend=frontend)
    assert any(n.op in ("split", "split_with_sizes") for n in graph.nodes())
    with torch.no_grad():
        assert torch.allclose(OnnxModel(export_onnx(graph, tmp_path / "float.onnx"), 1)(x), model(x), atol=1e-4)


def test_shape_asserts_fold_and_the_functional_batch_norm_becomes_a_module():
    model = _model()
    x = torch.randn(2, 3, 16, 16)
    graph = lower(model, (x[:1],))
    ops = [n.op for n in graph.nodes()]
    assert not {"getattr", "eq", "_assert"} & set(ops), ops
    (bn,) = [n for n in graph.nodes() if n.op.startswith("batch_norm")]
    assert bn.op == "batch_norm2d" and bn.target == "torch.nn.BatchNorm2d" and bn.name == "bn"
    with torch.no_grad():
        assert torch.allclose(Interpreter(graph).run(x), model(x), atol=1e-5)
    records = run_pipeline(graph, "fuse", PassContext())
    assert records[0].result.stats == {"conv2d+batch_norm2d": 1}
    assert not [n for n in graph.nodes() if n.op.startswith("batch_norm")]


def test_a_failing_shape_assert_is_the_users_error_with_the_models_message():
    class Needs4D(nn.Module):
        def forward(self, x):
            torch._assert(x.ndim == 4, "expected NCHW images")
            return x + 1

    with pytest.raises(LoweringError, match="expected NCHW images"):
        lower(Needs4D(), (torch.randn(2, 3),))


def test_split_quantizes_and_exports_to_onnx(tmp_path):
    model = _model()
    batches = [torch.randn(4, 3, 16, 16) for _ in range(3)]
    graph = lower(model, (batches[0][:1],))
    run_pipeline(graph, "ptq", PassContext(calib_data=[(b,) for b in batches[:2]],
                                           quant_config=QuantConfig.from_preset("x86")))
    split = next(n for n in graph.nodes() if n.op == "split")
    assert split.quant.mode == "static"  # split and its parts stay in the int8 region
    assert all(user.quant.mode == "static" for user in graph.users(split))
    write_model(graph, tmp_path / "int8")
    emitted = load_model(tmp_path / "int8")
    path = export_onnx(graph, tmp_path / "model.onnx")
    # rounding ties differ between the two at a few codes of the first conv: within one step, not exact
    (off, on) = check_onnx(path, emitted, [batches[2]], output_scale(graph), min_share=0.0, graph=graph)
    assert min(off.within_1_lsb, on.within_1_lsb) >= 0.98 and max(off.max_error_lsb, on.max_error_lsb) <= 3


@pytest.mark.slow
@pytest.mark.parametrize("name, folded", [("efficientnet_b0", 49), ("mixnet_s", 49), ("cspresnet50", 55)])
def test_timm_architectures_fold_quantize_and_export(name, folded, tmp_path):
    import timm  # a test dependency (pyproject's test extra)

    torch.manual_seed(0)
    model = randomize_batch_norm(timm.create_model(name, pretrained=False).eval())
    batches = [torch.randn(2, 3, 224, 224) for _ in range(3)]
    graph = lower(model, (batches[0][:1],))
    before = sum(n.op.startswith("batch_norm") for n in graph.nodes())
    run_pipeline(graph, "ptq", PassContext(calib_data=[(b,) for b in batches[:2]],
                                           quant_config=QuantConfig.from_preset("x86")))
    assert before - sum(n.op.startswith("batch_norm") for n in graph.nodes()) == folded
    write_model(graph, tmp_path / "int8")
    emitted = load_model(tmp_path / "int8")
    with torch.no_grad():
        want, int8 = model(batches[2]), emitted(batches[2])
    assert sqnr_db(int8, want) > 20
    path = export_onnx(graph, tmp_path / "model.onnx")
    # as the torchvision zoo test: the export as close to float as the emitted module (rounding differs)
    assert sqnr_db(OnnxModel(path, 2)(batches[2]), want) >= sqnr_db(int8, want) - 1.0


class Padded(nn.Module):
    """TensorFlow-style 'same' padding (tf_efficientnet_lite's): explicit zero pads before strided convs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.down = nn.Conv2d(8, 8, 3, stride=2)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.down(self.pad(torch.relu(self.stem(x))))
        return self.head(F.pad(x, (1, 1, 1, 1)))


@pytest.mark.parametrize("backend", ["native", "gemmlowp"])
def test_zero_pads_run_on_the_codes(tmp_path, backend):
    """A pad with 0.0 pads the codes with the zero point: no dequantize / quantize around it, on either backend."""
    torch.manual_seed(0)
    model = Padded().eval()
    x = torch.randn(4, 3, 16, 16)
    graph = lower(model, (x[:1],))
    run_pipeline(graph, f"fuse,calibrate,convert{{backend={backend}}}",
                 PassContext(calib_data=[(torch.randn(8, 3, 16, 16),)]))
    pads = [n for n in graph.nodes() if "pad" in n.op]
    assert len(pads) == 2 and all(n.quant.mode == "static" for n in pads)
    assert sum(n.op == "dequantize" for n in graph.nodes()) == 1
    write_model(graph, tmp_path / "int8")
    emitted = load_model(tmp_path / "int8")
    with torch.no_grad():
        assert torch.equal(emitted(x), Interpreter(graph).run(x))
        assert sqnr_db(emitted(x), model(x)) > 25
    # the QDQ export pads in float between DequantizeLinear and QuantizeLinear (with 0: the zero point's value)
    (off, on) = check_onnx(export_onnx(graph, tmp_path / "model.onnx"), emitted, [x], output_scale(graph),
                           graph=graph)
    assert off.within_1_lsb == on.within_1_lsb == 1.0


def test_padding_modules_export_to_onnx(tmp_path):
    model = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(3, 4, 3), nn.ConstantPad2d((1, 0, 2, 0), 0.5),
                          nn.ReplicationPad2d((0, 1, 1, 0)), nn.ZeroPad2d(1)).eval()
    x = torch.randn(2, 3, 8, 8)
    graph = lower(model, (x[:1],))
    with torch.no_grad():
        got = OnnxModel(export_onnx(graph, tmp_path / "model.onnx"), 1)(x)
        assert torch.allclose(got, model(x), atol=1e-5)
