"""Lowering nn.Modules to the IR: node kinds, types, sources, and tracing errors."""

from __future__ import annotations

import pytest
import torch
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


def test_leaf_module_whose_settings_cannot_be_read_is_refused():
    with pytest.raises(LoweringError, match="cannot read constructor argument 'factor' of _HiddenSetting"):
        lower(_UsesHidden(), (torch.randn(2),))


def test_exported_program_is_raised_to_module_ops():
    model = randomize_batch_norm(ConvBnRelu())
    program = torch.export.export(model, (torch.randn(1, 3, 6, 6),))
    g = lower(program.module(), (torch.randn(1, 3, 6, 6),))
    assert [n.op for n in g.nodes()] == ["input", "conv2d", "batch_norm2d", "relu", "output"]
    assert g.node("conv").kind == NodeKind.MODULE
    x = torch.randn(3, 3, 6, 6)
    torch.testing.assert_close(Interpreter(g).run(x), model(x))
