"""Lowering nn.Modules to the IR: node kinds, types, sources, and tracing errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from qcompile.errors import LoweringError
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.ir import NodeKind, TensorType, TupleType
from tests.models import ConvBnRelu, Mixed, randomize_batch_norm


def test_module_function_method_and_param_nodes():
    model = randomize_batch_norm(Mixed())
    g = lower(model, (torch.randn(2, 3, 8, 8),))
    kinds = {n.name: n.kind for n in g.nodes()}
    assert kinds["stem_conv"] == NodeKind.MODULE
    assert kinds["relu"] == NodeKind.FUNCTION  # F.relu
    assert kinds["view"] == NodeKind.METHOD
    assert kinds["scale"] == NodeKind.PARAM
    conv = g.node("stem_conv")
    assert conv.op == "conv2d" and conv.target == "torch.nn.Conv2d"
    assert conv.attrs["out_channels"] == 8 and conv.attrs["bias"] is False
    assert conv.params == {"weight": "stem.conv.weight"}
    assert conv.type == TensorType("f32", (2, 8, 8, 8))
    assert conv.source.module_path == "stem.conv"
    add = g.node("add")
    assert g.inputs(add) == [g.node("stem_relu")] * 2  # y + y: two ports, one producer
    assert isinstance(g.output_node.type, TupleType)


def test_inplace_activations_become_functional():
    g = lower(ConvBnRelu(), (torch.randn(1, 3, 4, 4),))
    assert g.node("relu").attrs["inplace"] is False


def test_source_line_recorded():
    g = lower(Mixed(), (torch.randn(1, 3, 8, 8),))
    src = g.node("cat").source
    assert src.location.endswith(".py:" + src.location.rsplit(":", 1)[1])
    assert "torch.cat" in src.code


def test_interpreter_matches_module_at_other_batch_size():
    model = randomize_batch_norm(Mixed())
    g = lower(model, (torch.randn(1, 3, 8, 8),))
    x = torch.randn(5, 3, 8, 8)  # shapes flow through size(): not fixed to the example
    out, mean = Interpreter(g).run(x)
    ref_out, ref_mean = model(x)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    torch.testing.assert_close(mean, ref_mean, rtol=0, atol=0)


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = _DataDependent()

    def forward(self, x):
        return self.inner(x) + 1


class _DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


def test_untraceable_model_names_module_line_and_fallback():
    with pytest.raises(LoweringError) as info:
        lower(_Branchy(), (torch.randn(2),))
    text = str(info.value)
    assert "module 'inner'" in text
    assert "test_lowering.py" in text and "if x.sum() > 0:" in text
    assert "torch.export" in text  # the fallback


def test_wrong_example_shape_is_reported():
    with pytest.raises(LoweringError, match="example inputs f32\\[1,5,8,8\\]"):
        lower(ConvBnRelu(), (torch.randn(1, 5, 8, 8),))


class _HiddenSetting(nn.Module):
    """A leaf module (it claims to live in torch.nn) that stores its setting under another name."""

    def __init__(self, factor: float):
        super().__init__()
        self._f = factor

    def forward(self, x):
        return x * self._f


_HiddenSetting.__module__ = "torch.nn.modules.hidden"


class _UsesHidden(nn.Module):
    def __init__(self):
        super().__init__()
        self.leaf = _HiddenSetting(3.0)

    def forward(self, x):
        return self.leaf(x)


def test_leaf_module_whose_settings_cannot_be_read_goes_through_torch_export():
    notes: list[str] = []
    g = lower(_UsesHidden(), (torch.randn(2),), notes)
    assert len(notes) == 1
    assert "cannot read constructor argument 'factor' of _HiddenSetting" in notes[0]
    assert "lowered through torch.export" in notes[0]
    assert not any(n.kind == NodeKind.MODULE for n in g.nodes())  # the multiply, not the opaque module
    x = torch.randn(5)
    torch.testing.assert_close(Interpreter(g).run(x), x * 3.0)


class _HiddenAndBranchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.leaf = _HiddenSetting(3.0)

    def forward(self, x):
        y = self.leaf(x)
        if y.sum() > 0:  # data-dependent: torch.export refuses it too
            return y
        return -y


def test_model_neither_fx_nor_export_can_lower_is_refused_with_both_reasons():
    with pytest.raises(LoweringError) as info:
        lower(_HiddenAndBranchy(), (torch.randn(2),))
    text = str(info.value)
    assert "cannot trace _HiddenAndBranchy" in text and "if y.sum() > 0:" in text
    assert "torch.export failed as well" in text
    assert "torch.cond" in text


class _Encoder(nn.Module):
    """torch.nn's TransformerEncoder: a container fx keeps as one opaque leaf."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        return self.head(self.enc(x).mean(1))


def test_transformer_encoder_lowers_through_export_with_a_dynamic_batch():
    torch.manual_seed(0)
    model = _Encoder().eval()
    notes: list[str] = []
    g = lower(model, (torch.randn(1, 6, 32),), notes)
    assert "TransformerEncoder" in notes[0] and "fixed" not in notes[0]
    assert "fixed_batch" not in g.attrs
    assert g.find(op="linear")
    x = torch.randn(3, 6, 32)  # another batch size than the example's
    with torch.no_grad():
        torch.testing.assert_close(Interpreter(g).run(x), model(x))


class _FixedBatch(nn.Module):
    def forward(self, x):
        if x.shape[0] != 1:  # torch.export cannot keep this batch dynamic
            raise ValueError("one sample at a time")
        return x.reshape(1, -1)


def test_export_fallback_records_a_batch_the_model_fixes():
    notes: list[str] = []
    g = lower(_UsesFixedBatch(), (torch.randn(1, 2, 3),), notes)
    assert g.attrs["fixed_batch"] == 1
    assert "its batch is fixed at 1" in notes[0]


class _UsesFixedBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.leaf = _HiddenSetting(2.0)
        self.fixed = _FixedBatch()

    def forward(self, x):
        return self.fixed(self.leaf(x))


def test_exported_program_is_raised_to_module_ops():
    model = randomize_batch_norm(ConvBnRelu())
    program = torch.export.export(model, (torch.randn(1, 3, 6, 6),))
    g = lower(program.module(), (torch.randn(1, 3, 6, 6),))
    assert [n.op for n in g.nodes()] == ["input", "conv2d", "batch_norm2d", "relu", "output"]
    assert g.node("conv").kind == NodeKind.MODULE
    x = torch.randn(3, 3, 6, 6)
    torch.testing.assert_close(Interpreter(g).run(x), model(x))


class _SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        y, _ = self.attention(x, x, x, need_weights=False)
        return self.head(y)


def test_export_frontend_lowers_torch_nn_modules_to_their_operations():
    torch.manual_seed(0)
    model = _SelfAttention().eval()
    x = torch.randn(1, 5, 16)
    by_fx = lower(model, (x,))
    assert [n.op for n in by_fx.find(kind=NodeKind.MODULE)] == ["multihead_attention", "linear"]
    notes: list[str] = []
    by_export = lower(model, (x,), notes, frontend="export")
    assert not notes  # asked for, not a fallback
    assert len(by_export.find(op="linear")) == 3  # the in- and out-projections, and the head
    assert by_export.find(op="scaled_dot_product_attention")
    y = torch.randn(4, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(Interpreter(by_export).run(y), model(y))


def test_unknown_frontend_is_refused():
    from qcompile.errors import QCompileError

    with pytest.raises(QCompileError, match="unknown frontend 'jit'"):
        lower(_SelfAttention(), (torch.randn(1, 5, 16),), frontend="jit")


class _TinyDetector(nn.Module):
    """A detector's tail: boxes kept by score (a data-dependent count), then NMS, which branches on that count."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 5, 1)

    def forward(self, x):
        out = self.head(x).flatten(2)[0].t()  # [H * W, 4 box coordinates + 1 score]
        boxes = torch.cat([out[:, :2], out[:, :2] + out[:, 2:4].abs()], 1)
        kept = torch.where(out[:, 4] > 0)[0]
        boxes, scores = boxes[kept], out[kept, 4]
        return boxes[torchvision.ops.batched_nms(boxes, scores, torch.zeros_like(kept), 0.5)]


def test_a_data_dependent_tail_is_refused_briefly_with_the_part_to_compile(capfd):
    with pytest.raises(LoweringError) as info:
        lower(_TinyDetector().eval(), (torch.randn(1, 3, 8, 8),))
    text = f"{info.value}\n{info.value.hint}"
    assert "torch.export failed as well: GuardOnDataDependentSymNode" in text
    assert "raised at torchvision/ops/boxes.py" in text  # where in the model's code, as torch.export names it
    assert "compile the part before it" in info.value.hint and "model.backbone" in info.value.hint
    assert len(capfd.readouterr().err) < 2000  # torch's log of the failed export's graph is kept back
