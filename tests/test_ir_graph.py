"""The Graph API: ports, uses, mutation, ordering, copying, verification."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qcompile.errors import VerifyError
from qcompile.ir import Graph, NodeKind, Ref, TensorType, verify


def _add_graph():
    g = Graph("AddSelf")
    x = g.add_node("input", NodeKind.INPUT, name="x", target="x", type=TensorType("f32", (2,)))
    add = g.add_node("add", NodeKind.FUNCTION, [x, x], target="operator.add",
                     type=TensorType("f32", (2,)))
    out = g.add_node("output", NodeKind.OUTPUT, [add])
    return g, x, add, out


def test_same_value_on_two_ports():
    g, x, add, _ = _add_graph()
    assert g.inputs(add) == [x, x]
    assert g.uses(x) == [(add, 0), (add, 1)]
    assert g.users(x) == [add]
    assert add.args == (Ref(0), Ref(1))
    verify(g)


def test_names_are_unique_and_sanitized():
    g = Graph()
    a = g.add_node("input", NodeKind.INPUT, name="layer1.0.conv")
    b = g.add_node("input", NodeKind.INPUT, name="layer1.0.conv")
    c = g.add_node("input", NodeKind.INPUT, name="class")
    assert (a.name, b.name, c.name) == ("layer1_0_conv", "layer1_0_conv_1", "class_")


def test_order_is_topological_with_insertion_ties():
    g, x, add, out = _add_graph()
    late = g.add_node("neg", NodeKind.FUNCTION, [x], target="torch.neg", after=x)
    assert [n.name for n in g.nodes()] == ["x", "neg", "add", "output"]
    g.set_input(add, 1, late)
    assert [n.name for n in g.nodes()] == ["x", "neg", "add", "output"]
    g.renumber()
    assert [n._order for n in g.nodes()] == [(0,), (1,), (2,), (3,)]


def test_replace_all_uses_and_erase():
    g, x, add, out = _add_graph()
    neg = g.add_node("neg", NodeKind.FUNCTION, [x], target="torch.neg")
    assert g.replace_all_uses(add, neg) == 1
    assert g.inputs(out) == [neg]
    g.erase(add)
    assert add not in g
    with pytest.raises(VerifyError, match="still used by %output"):
        g.erase(neg)


def test_set_input_on_missing_port():
    g, x, add, out = _add_graph()
    with pytest.raises(IndexError, match="no input port 5"):
        g.set_input(add, 5, x)


def test_node_of_other_graph_is_refused():
    g1, x1, _, _ = _add_graph()
    g2, _, add2, _ = _add_graph()
    with pytest.raises(VerifyError, match="does not belong"):
        g2.set_input(add2, 0, x1)


def test_copy_is_independent():
    g, x, add, out = _add_graph()
    g.params["w"] = torch.ones(2)
    c = g.copy()
    c.node("add").act = "relu"
    c.erase(c.node("output"))
    assert add.act is None
    assert len(g) == 3 and len(c) == 2
    assert c.params["w"] is g.params["w"]


def test_rename_keeps_edges():
    g, x, add, out = _add_graph()
    g.rename(add, "sum")
    assert add.name == "sum" and g.inputs(out) == [add] and g.node("sum") is add


def test_remove_unused_params_keeps_param_nodes():
    g = Graph()
    g.params.update(a=torch.zeros(1), b=torch.zeros(1))
    p = g.add_node("param", NodeKind.PARAM, target="a")
    g.add_node("output", NodeKind.OUTPUT, [p])
    assert g.remove_unused_params() == ["b"]
    assert list(g.params) == ["a"]


@pytest.mark.parametrize("breakage, message", [
    ("cycle", "cycle"),
    ("two_outputs", "exactly one output"),
    ("unreferenced_port", "refer to ports"),
    ("missing_param", "does not exist"),
    ("bad_module_attr", "unknown attributes"),
])
def test_verify_catches(breakage, message):
    g, x, add, out = _add_graph()
    if breakage == "cycle":
        g._nx.add_edge(add.name, x.name, key=0)  # simulate a broken pass
        g._order_cache = None
    elif breakage == "two_outputs":
        g.add_node("output", NodeKind.OUTPUT, [add])
    elif breakage == "unreferenced_port":
        add.args = (Ref(0), Ref(0))
    elif breakage == "missing_param":
        p = g.add_node("param", NodeKind.PARAM, target="nope")
        g.add_node("neg", NodeKind.FUNCTION, [p], target="torch.neg")
    elif breakage == "bad_module_attr":
        g.add_node("relu", NodeKind.MODULE, [x], target="torch.nn.ReLU", attrs={"slope": 2})
    with pytest.raises(VerifyError, match=message):
        verify(g)


def test_verify_error_shows_context():
    g, x, add, out = _add_graph()
    add.args = (Ref(0), Ref(0))
    with pytest.raises(VerifyError) as info:
        verify(g)
    assert ">> %add" in str(info.value)


class _SquareConv(nn.Conv2d):
    """A subclass that passes on only what it chooses: its constructor takes ``c`` and ``**kwargs``."""

    def __init__(self, c, **kwargs):
        super().__init__(c, c, 3, **kwargs)


def test_constructor_parameters_are_read_through_constructors_that_pass_everything_on():
    from qcompile.ir.modules import ctor_defaults
    from qcompile.nn.qat import QATConv2d

    # (*args, weight_per_channel, **kwargs): its own keyword, then nn.Conv2d's
    assert list(ctor_defaults(QATConv2d))[:4] == ["weight_per_channel", "in_channels", "out_channels", "kernel_size"]
    assert list(ctor_defaults(nn.LSTM))[:2] == ["input_size", "hidden_size"]  # (*args, **kwargs): nn.RNNBase's
    assert list(ctor_defaults(_SquareConv)) == ["c"]  # nn.Conv2d's would be passed twice
