"""Pass infrastructure: parsing, canonical printing, order checks, manager, instruments, plugins."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import pytest
import torch

from qcompile.errors import PassError, PipelineError
from qcompile.frontend.lower import lower
from qcompile.ir import Graph, NodeKind
from qcompile.pipeline import (
    DumpDir,
    Pass,
    PassContext,
    PassManager,
    PassResult,
    PrintAfter,
    Timing,
    function_pass,
    load_plugin,
    parse_pipeline,
    register_pass,
    register_pipeline,
    registered_passes,
    registry,
    run_pipeline,
)
from tests.models import ConvBnRelu, randomize_batch_norm


@register_pass
@dataclass(frozen=True)
class _Tagger(Pass):
    """Test pass with one option of each kind."""

    name = "test-tagger"
    requires = ("lowered",)
    provides = ("tagged",)

    bits: int = 8
    ratio: float = 0.5
    enabled: bool = True
    prior: Literal["laplace", "gauss"] = "laplace"
    widths: tuple[int, ...] = (4, 8)
    label: str = "x"

    def run(self, graph, ctx):
        return PassResult(False)


@register_pass(default_for=("prepared",))
@dataclass(frozen=True)
class _Prepare(Pass):
    """Test pass that is the default provider of 'prepared'."""

    name = "test-prepare"
    requires = ("tagged",)
    provides = ("prepared",)

    def run(self, graph, ctx):
        return PassResult(False)


@register_pass
@dataclass(frozen=True)
class _NeedsPrepared(Pass):
    """Test pass that needs 'prepared'."""

    name = "test-needs-prepared"
    requires = ("prepared",)
    invalidates = ("tagged",)

    def run(self, graph, ctx):
        return PassResult(False)


@register_pass
@dataclass(frozen=True)
class _Liar(Pass):
    """Changes the graph but says it did not."""

    name = "test-liar"
    requires = ("lowered",)

    def run(self, graph, ctx):
        graph.find(op="conv2d")[0].act = "relu"
        return PassResult(modified=False)


@register_pass
@dataclass(frozen=True)
class _Breaker(Pass):
    """Leaves a dangling parameter reference."""

    name = "test-breaker"
    requires = ("lowered",)

    def run(self, graph, ctx):
        graph.find(op="conv2d")[0].params["weight"] = "gone"
        return PassResult(modified=True)


def test_options_typed_and_canonical_round_trip():
    p = parse_pipeline("test-tagger{bits=4 ratio=0.25 enabled=false prior=gauss widths=2,3,4 label=hi}")
    tagger = p.passes[0]
    assert (tagger.bits, tagger.ratio, tagger.enabled, tagger.prior, tagger.widths, tagger.label) == (
        4, 0.25, False, "gauss", (2, 3, 4), "hi")
    text = str(p)
    assert text == "test-tagger{bits=4 ratio=0.25 enabled=false prior=gauss widths=2,3,4 label=hi}"
    assert parse_pipeline(text) == p


def test_defaults_are_not_printed_and_spaces_tolerated():
    p = parse_pipeline(" fuse , test-tagger{bits=8} ")
    assert str(p) == "fuse,test-tagger"


@pytest.mark.parametrize("text, message, caret, hint", [
    ("fuse,test-taggr", "unknown pass 'test-taggr'", "     ^^^^^^^^^^", "did you mean 'test-tagger'"),
    ("test-tagger{bitz=4}", "unknown option 'bitz'", "            ^^^^", "did you mean 'bits'"),
    ("test-tagger{bits=four}", "bad value 'four'", "            ^^^^^^^^^", "expected an integer"),
    ("test-tagger{prior=cauchy}", "bad value 'cauchy'", None, "one of laplace, gauss"),
    ("test-tagger{bits}", "is not key=value", None, None),
    ("test-tagger{bits=4", "unclosed", None, None),
    ("fuse;test-tagger", "unexpected ';'", "    ^", None),
    ("", "expected a pass name", None, None),
])
def test_parse_errors_point_at_the_token(text, message, caret, hint):
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text)
    err = str(info.value)
    assert message in err
    if caret:
        assert "\n    " + caret + "\n" in err + "\n"
    if hint:
        assert hint in info.value.hint


def test_missing_fact_without_default_provider_fails_at_parse_time():
    with pytest.raises(PipelineError) as info:
        parse_pipeline("test-prepare")
    assert "'test-prepare' requires 'tagged', which no earlier pass provides" in str(info.value)
    assert "test-tagger" in info.value.hint


def test_default_provider_is_inserted_and_reported():
    p = parse_pipeline("test-tagger,test-needs-prepared")
    assert str(p) == "test-tagger,test-prepare,test-needs-prepared"
    assert p.inserted == (1,)


def test_invalidated_fact_must_be_provided_again():
    with pytest.raises(PipelineError, match="'test-prepare' requires 'tagged'"):
        parse_pipeline("test-tagger,test-needs-prepared,test-prepare")


@pytest.mark.parametrize("text, message", [
    ("ptq,ptq", "'fuse' cannot run after 'convert': the graph is statically-converted by then"),
    ("fuse,calibrate,convert,calibrate", "'calibrate' cannot run after 'convert'"),
    ("fuse,calibrate,convert,aciq", "'aciq' cannot run after 'convert'"),
])
def test_float_passes_after_quantizing_are_refused_when_parsed(text, message):
    with pytest.raises(PipelineError, match=message) as info:
        parse_pipeline(text)
    assert "fuse,calibrate,convert" in info.value.hint
    # once is fine, and dynamic may follow convert or, for embeddings, precede it
    for fine in ("ptq", "ptq,dynamic{ops=embedding}", "dynamic{ops=embedding},ptq"):
        parse_pipeline(fine)


def test_static_quantization_after_dynamic_linears_is_a_clear_error():
    from qcompile.errors import QCompileError

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    x = torch.randn(4, 8)
    graph = lower(model, (x[:1],))
    with pytest.raises(QCompileError, match="static quantization after dynamic quantization of linear") as info:
        run_pipeline(graph, "dynamic,ptq", PassContext(calib_data=[(x,)]))
    assert "ptq,dynamic" in str(info.value)


def test_named_pipeline_expands():
    register_pipeline("test-named", "fuse,test-tagger{bits=4}", "for tests")
    try:
        assert str(parse_pipeline("test-named")) == "fuse,test-tagger{bits=4}"
        with pytest.raises(PipelineError, match="takes no options"):
            parse_pipeline("test-named{bits=2}")
    finally:
        registry._NAMED_PIPELINES.pop("test-named")


@pytest.fixture
def graph():
    return lower(randomize_batch_norm(ConvBnRelu()), (torch.randn(1, 3, 6, 6),))


def test_manager_rejects_a_pass_that_lies_about_modified(graph):
    with pytest.raises(PassError) as info:
        run_pipeline(graph, "test-liar")
    assert "reported modified=False but changed the graph" in str(info.value)
    assert "act='relu'" in str(info.value)  # the diff is shown


def test_manager_verifies_between_passes(graph):
    with pytest.raises(Exception, match="parameter \\$gone"):
        run_pipeline(graph, "test-breaker")


def test_manager_updates_facts_and_checks_requirements(graph):
    run_pipeline(graph, "fuse,test-tagger")
    assert graph.facts == {"lowered", "fused", "tagged"}
    pipeline = parse_pipeline("test-tagger,test-needs-prepared")
    g2 = Graph()
    g2.add_node("output", NodeKind.OUTPUT)
    with pytest.raises(PassError, match="requires \\['lowered'\\]"):
        PassManager(pipeline).run(g2)


def test_instruments_dump_print_and_time(graph, tmp_path):
    out = io.StringIO()
    timing = Timing()
    dump = DumpDir(tmp_path / "dump", ("qir", "dot", "svg"))
    run_pipeline(graph, "fuse,test-tagger", PassContext(),
                 [PrintAfter(None, only_changed=True, stream=out), dump, timing])
    names = sorted(p.name for p in (tmp_path / "dump").iterdir())
    assert names == ["00_input.dot", "00_input.qir", "00_input.svg", "01_fuse.dot", "01_fuse.qir",
                     "01_fuse.svg", "02_test-tagger.dot", "02_test-tagger.qir", "02_test-tagger.svg"]
    assert "batch_norm2d" in (tmp_path / "dump" / "00_input.qir").read_text()
    assert "batch_norm2d" not in (tmp_path / "dump" / "01_fuse.qir").read_text()
    printed = out.getvalue()
    assert "// after fuse\ngraph ConvBnRelu" in printed
    assert "// after test-tagger: unchanged" in printed
    assert [name for name, _, _ in timing.seconds] == ["fuse", "test-tagger"]
    assert "total" in timing.table()


def test_instruments_do_not_change_results():
    model = randomize_batch_norm(ConvBnRelu())
    a = lower(model, (torch.randn(1, 3, 6, 6),))
    b = lower(model, (torch.randn(1, 3, 6, 6),))
    run_pipeline(a, "fuse")
    run_pipeline(b, "fuse", PassContext(debug=True, log=lambda m: None), [Timing(), PrintAfter(stream=io.StringIO())])
    from qcompile.ir import print_graph
    assert print_graph(a) == print_graph(b)
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)


def test_function_pass_decorator(graph):
    seen = []

    @function_pass("test-count-convs", requires=("lowered",))
    def count_convs(graph, ctx, *, minimum: int = 1):
        """Count convolutions."""
        seen.append((len(graph.find(op="conv2d")), minimum))
        return False

    assert registered_passes()["test-count-convs"] is count_convs
    p = parse_pipeline("test-count-convs{minimum=3}")
    assert str(p) == "test-count-convs{minimum=3}"
    records = run_pipeline(graph, p)
    assert seen == [(1, 3)] and records[0].result.modified is False


def test_function_pass_options_need_defaults():
    with pytest.raises(TypeError, match="need defaults"):
        @function_pass("test-bad-options")
        def bad(graph, ctx, *, level: int):
            return False


def test_pass_names_must_be_kebab_case():
    @dataclass(frozen=True)
    class Bad(Pass):
        name = "Bad_Name"

        def run(self, graph, ctx):
            return PassResult(False)

    with pytest.raises(ValueError, match="kebab-case"):
        register_pass(Bad)


def test_plugin_errors(tmp_path):
    from qcompile.errors import QCompileError

    with pytest.raises(QCompileError, match="does not exist"):
        load_plugin(str(tmp_path / "none.py"))
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(QCompileError, match="registered no pass"):
        load_plugin(str(empty))
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(QCompileError, match="boom"):
        load_plugin(str(broken))
    with pytest.raises(QCompileError, match="cannot be imported"):
        load_plugin("no_such_plugin_module")


def test_pipelines_are_asked_for_facts_not_pass_names():
    from qcompile.backends.grids import backend_of
    from qcompile.pipeline import CONVERTED, SIMULATED, STATICALLY_CONVERTED

    pipeline = parse_pipeline("fuse,calibrate,aciq,convert{backend=gemmlowp}")
    assert pipeline.provides(STATICALLY_CONVERTED) and pipeline.provides(CONVERTED)
    assert not pipeline.provides(SIMULATED)
    assert pipeline.provider(SIMULATED, STATICALLY_CONVERTED).name == "convert"
    assert backend_of(pipeline.passes) == "gemmlowp"
    dynamic = parse_pipeline("fuse,dynamic")
    assert dynamic.provides(CONVERTED) and not dynamic.provides(STATICALLY_CONVERTED)
    assert backend_of(dynamic.passes) is None
