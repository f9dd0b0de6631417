"""The .qir printer, DOT/SVG drawing, and the golden comparator itself."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import torch

from qcompile.frontend.lower import lower
from qcompile.ir import print_graph, to_dot, to_svg
from qcompile.ir.printer import format_constant
from tests.golden import GoldenMismatch, check_golden
from tests.models import Mixed


@pytest.fixture(scope="module")
def mixed_graph():
    torch.manual_seed(0)
    return lower(Mixed(), (torch.randn(1, 3, 8, 8),))


def test_one_aligned_line_per_node(mixed_graph):
    text = print_graph(mixed_graph)
    lines = text.splitlines()
    assert lines[0] == "graph Mixed  # facts: lowered"
    node_lines = lines[1:-1]
    assert len(node_lines) == len(mixed_graph)
    assert len({line.index(" = ") for line in node_lines}) == 1  # aligned
    assert lines[-1].startswith("# params: ")


def test_printing_is_stable_across_lowerings(mixed_graph):
    torch.manual_seed(1)
    again = lower(Mixed(), (torch.randn(1, 3, 8, 8),))
    assert print_graph(again) == print_graph(mixed_graph)  # no ids, no values, no paths


def test_line_contents(mixed_graph):
    text = print_graph(mixed_graph)
    squeezed = [" ".join(line.split()) for line in text.splitlines()]
    assert ("%stem_conv = conv2d(%x, $stem.conv.weight) : f32[1,8,8,8] {bias=False, in_channels=3, "
            "kernel_size=(3, 3), out_channels=8, padding=(1, 1)}") in squeezed
    assert ("%stem_bn = batch_norm2d(%stem_conv, $stem.bn.{weight,bias,running_mean,running_var,"
            "num_batches_tracked}) : f32[1,8,8,8] {num_features=8}") in squeezed
    assert "cat([%add, %mul], dim=1)" in text
    assert "view(%adaptive_avg_pool2d, %size, -1)" in text
    assert "%scale" in text and "param($scale)" in text
    assert ": (f32[1,4], f32[1])" in text  # tuple output type


def test_quant_annotations_print_once_set(mixed_graph):
    g = mixed_graph.copy()
    node = g.node("stem_conv")
    assert "#" not in [line for line in print_graph(g).splitlines() if "%stem_conv " in line][0]
    node.quant.bits = 4
    node.quant.clip = (-1.5, 2.0)
    line = [line for line in print_graph(g).splitlines() if "%stem_conv " in line][0]
    assert line.endswith("# clip=[-1.5, 2] bits=4")


@pytest.mark.parametrize("value, text", [
    (0.1 + 0.2, "0.3"),
    (1e-5, "1e-05"),
    (float("inf"), "float('inf')"),
    ((1,), "(1,)"),
    (slice(None, 2), ":2"),
    (torch.float32, "torch.float32"),
])
def test_constant_formatting(value, text):
    assert format_constant(value) == text


def test_dot_has_every_node_and_edge(mixed_graph):
    dot = to_dot(mixed_graph)
    assert dot.startswith('digraph "Mixed"')
    edges = sum(len(mixed_graph.inputs(n)) for n in mixed_graph.nodes())
    assert dot.count(" -> ") == edges
    for node in mixed_graph.nodes():
        assert f'"{node.name}" [label=' in dot


def test_svg_is_wellformed_and_complete(mixed_graph):
    root = ET.fromstring(to_svg(mixed_graph))
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}g")) == len(mixed_graph)
    texts = {t.text for t in root.iter(f"{ns}text")}
    assert "%stem_conv" in texts and "conv2d" in texts


def test_golden_comparator_detects_change_and_updates(tmp_path):
    path = tmp_path / "g.qir"
    with pytest.raises(GoldenMismatch, match="missing"):
        check_golden("a\n", path, update=False)
    check_golden("a\nb\n", path, update=True)
    check_golden("a\nb\n", path, update=False)
    with pytest.raises(GoldenMismatch) as info:
        check_golden("a\nc\n", path, update=False)
    assert "-b" in str(info.value) and "+c" in str(info.value)
    with pytest.raises(GoldenMismatch):
        check_golden("a\nb", path, update=False)  # even a trailing newline counts
