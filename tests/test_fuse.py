"""The fuse pass: what it fuses, what it refuses and why, and the numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from qcompile.passes.fuse import fold_batch_norm
from torch import nn

from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.ir import print_graph
from qcompile.pipeline import PassContext, run_pipeline
from tests.models import ConvBnRelu, Mixed, randomize_batch_norm


def _run(model, shape=(2, 3, 8, 8), pipeline="fuse"):
    x = torch.randn(*shape)
    g = lower(model, (x,))
    ctx = PassContext()
    records = run_pipeline(g, pipeline, ctx)
    return g, records[0].result, ctx, x


def test_conv_bn_relu_fuses_to_one_node():
    model = randomize_batch_norm(ConvBnRelu())
    g, result, _, x = _run(model)
    assert result.modified and result.stats == {"conv2d+batch_norm2d+relu": 1}
    assert [n.op for n in g.nodes()] == ["input", "conv2d", "output"]
    conv = g.node("conv")
    assert conv.act == "relu" and conv.attrs["bias"] is True
    assert set(g.params) == {"conv.weight", "conv.bias"}  # BN's tensors are gone
    out = Interpreter(g).run(x)
    ref = model(x)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_second_run_changes_nothing():
    g, _, _, _ = _run(randomize_batch_norm(ConvBnRelu()))
    before = print_graph(g)
    records = run_pipeline(g, "fuse")
    assert records[0].result.modified is False and print_graph(g) == before


class _BnHasTwoReaders(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        c = self.conv(x)
        return self.bn(c), c.mean()


class _SharedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn1, self.bn2 = nn.BatchNorm2d(3), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn1(self.conv(x)) + self.bn2(self.conv(x))


class _SiluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return F.silu(self.conv(x))


@pytest.mark.parametrize("model, reason", [
    (_BnHasTwoReaders(), "its output has 2 readers"),
    (_SharedConv(), "weights are shared"),
    (_SiluNet(), "next is %silu (silu)"),
])
def test_negative_cases_are_explained(model, reason):
    g, result, ctx, x = _run(randomize_batch_norm(model))
    assert result.modified is False and result.stats == {}
    messages = [m for p, m in ctx.explanations]
    assert any(reason in m for m in messages), messages


def test_linear_relu_and_functional_relu():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 2)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    model = Net().eval()
    g, result, _, x = _run(model, shape=(3, 6))
    assert result.stats == {"linear+relu": 1}
    torch.testing.assert_close(Interpreter(g).run(x), model(x))


def test_relu6_and_options():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.act = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU6()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    model = randomize_batch_norm(Net())
    g, result, _, x = _run(model, pipeline="fuse{activations=}")
    assert result.stats == {"conv2d+batch_norm2d": 1}
    g, result, ctx, x = _run(model, pipeline="fuse{activations=relu}")  # torch.ao's choice
    assert result.stats == {"conv2d+batch_norm2d": 1} and g.find(op="relu6")
    g, result, _, x = _run(model)
    assert result.stats == {"conv2d+batch_norm2d+relu6": 1}
    out, ref = Interpreter(g).run(x), model(x)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_add_relu_fuses_like_resnet_blocks():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.conv(x) + x)

    model = Block().eval()
    g, result, _, x = _run(model)
    assert result.stats == {"add+relu": 1}
    assert g.node("add").act == "relu"
    torch.testing.assert_close(Interpreter(g).run(x), model(x))
    g, result, _, x = _run(model, pipeline="fuse{binary-relu=false}")
    assert result.stats == {}


def test_unknown_activation_option_is_refused():
    from qcompile.errors import PipelineError

    with pytest.raises(PipelineError, match="cannot fuse \\['gelu'\\]"):
        _run(ConvBnRelu(), pipeline="fuse{activations=relu,gelu}")


def test_fold_formula_against_batch_norm_module():
    conv = nn.Conv2d(4, 6, 3, bias=True)
    bn = randomize_batch_norm(nn.BatchNorm2d(6))
    weight, bias = fold_batch_norm(conv.weight, conv.bias, dict(bn.state_dict()), bn.eps)
    x = torch.randn(2, 4, 7, 7)
    torch.testing.assert_close(F.conv2d(x, weight, bias), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_mixed_model_fusions_and_numbers():
    model = randomize_batch_norm(Mixed())
    g, result, _, x = _run(model)
    assert result.stats == {"conv2d+batch_norm2d+relu": 1, "conv2d+relu": 1}
    for got, want in zip(Interpreter(g).run(x), model(x), strict=True):
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()


class _MixedConvNorm(nn.Module):
    """MixNet's block in timm's style: a conv per group of channels, concatenated, one norm, an identity, a
    ReLU; ``pool=True`` concatenates a pooled input instead, which has no weights to fold into."""

    def __init__(self, pool: bool = False):
        super().__init__()
        self.pool = pool
        self.convs = nn.ModuleList([nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.Conv2d(2, 6, 5, padding=2)])
        self.bn, self.drop, self.act = nn.BatchNorm2d(10 if not pool else 7), nn.Identity(), nn.ReLU()

    def forward(self, x):
        parts = torch.split(x, [1, 2], dim=1)
        made = [self.convs[0](parts[0]), self.convs[1](parts[1])]
        if self.pool:
            made = [made[1], F.max_pool2d(parts[0], 3, 1, 1)]
        return self.act(self.drop(self.bn(torch.cat(made, dim=1))))


def test_a_norm_after_a_channel_concatenation_of_convs_folds_into_them():
    model = randomize_batch_norm(_MixedConvNorm()).eval()
    g, result, _, x = _run(model)
    assert result.stats == {"identity removed": 1, "cat+batch_norm2d+relu": 1}
    assert sorted(n.op for n in g.nodes()) == ["cat", "conv2d", "conv2d", "getitem", "getitem", "input", "output", "split"]
    assert all(n.act == "relu" and n.attrs["bias"] is True for n in g.find(op="conv2d"))
    with torch.no_grad():
        ref = model(x)
        assert (Interpreter(g).run(x) - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_a_norm_after_a_concatenation_with_other_inputs_stays():
    g, result, ctx, _ = _run(randomize_batch_norm(_MixedConvNorm(pool=True)).eval())
    assert result.stats == {"identity removed": 1}
    assert len(g.find(op="batch_norm2d")) == 1
    assert any("is not a channel concatenation of convs read by it alone" in m for _, m in ctx.explanations)
