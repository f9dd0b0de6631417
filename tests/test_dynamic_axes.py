"""Inputs whose size varies besides the batch (a sequence length), and token-id inputs, through lowering and ONNX."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from qcompile.codegen import load_model, write_model
from qcompile.errors import LoweringError, QCompileError
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.ir import NodeKind
from qcompile.onnx.export import build_onnx, export_onnx
from qcompile.onnx.runtime.session import OnnxModel
from qcompile.pipeline import PassContext, run_pipeline
from qcompile.quant.config import QuantConfig
from tests.models import AttentionBlock, FixedLengthTagger, TokenClassifier, TokensAndFeatures, TwoLengths
from tests.test_cli import qcompile
from tests.torchao_reference import sqnr


def _ids(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 100, (batch, length), generator=torch.Generator().manual_seed(seed))


def _declared(path) -> list:
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


def test_token_ids_with_any_sequence_length_through_static_ptq_and_onnxruntime(tmp_path):
    torch.manual_seed(0)
    model = TokenClassifier().eval()
    calib = [(_ids(8, 12, seed),) for seed in range(4)]
    graph = lower(model, (calib[0][0][:1],), dynamic_axes=(1,))
    run_pipeline(graph, "ptq", PassContext(calib_data=calib, quant_config=QuantConfig.from_preset("x86")))
    assert graph.attrs["dynamic_axes"] == {"ids": [1]}
    path = export_onnx(graph, tmp_path / "model.onnx")
    assert _declared(path) == ["batch", "ids_axis1"]
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    exported = OnnxModel(path)
    write_model(graph, tmp_path / "native")
    native = load_model(tmp_path / "native")
    for length in (5, 12, 31):  # shorter, as calibrated, longer
        ids = _ids(6, length, 100 + length)
        with torch.no_grad():
            reference, ours = model(ids), native(ids)
        assert exported(ids).shape == reference.shape == (6, 3)
        assert sqnr(exported(ids), reference) > 20 and sqnr(ours, reference) > 20
        assert torch.equal(exported(ids).argmax(1), ours.argmax(1))
    with pytest.raises(QCompileError, match="takes integers"):
        exported(torch.randn(6, 5))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_float_graph_with_a_dynamic_sequence_exports_exactly(frontend, tmp_path):
    # fx keeps sizes read from the input symbolic as it traces; torch.export needs the axis marked
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), AttentionBlock(), nn.Linear(32, 4)).eval()
    graph = lower(model, (torch.randn(1, 12, 16),), frontend=frontend, dynamic_axes=(1,))
    run_pipeline(graph, "fuse")
    exported = OnnxModel(export_onnx(graph, tmp_path / "model.onnx"))
    for length in (3, 12, 40):
        x = torch.randn(2, length, 16)
        with torch.no_grad():
            torch.testing.assert_close(exported(x), model(x), rtol=1e-4, atol=1e-5)


def test_dynamic_quantization_with_a_dynamic_sequence(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), AttentionBlock(), nn.Linear(32, 4)).eval()
    graph = lower(model, (torch.randn(1, 12, 16),), dynamic_axes=(1,))
    run_pipeline(graph, "dynamic")
    exported = OnnxModel(export_onnx(graph, tmp_path / "model.onnx"))
    x = torch.randn(2, 20, 16)
    with torch.no_grad():
        assert sqnr(exported(x), Interpreter(graph).run(x)) > 35


def test_without_dynamic_axes_the_sequence_length_is_the_examples(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), AttentionBlock(), nn.Linear(32, 4)).eval()
    graph = lower(model, (torch.randn(1, 12, 16),))
    run_pipeline(graph, "fuse")
    path = export_onnx(graph, tmp_path / "model.onnx")
    assert _declared(path) == ["batch", 12, 16]
    with pytest.raises(QCompileError, match=r"takes inputs of shape \[N, 12, 16\]"):
        OnnxModel(path)(torch.randn(2, 13, 16))


def test_a_model_that_fixes_the_length_is_refused_with_the_reason(tmp_path):
    model = FixedLengthTagger().eval()
    example = (torch.randn(1, 12, 16),)
    graph = lower(model, example, dynamic_axes=(1,))  # fx: the sizes are not checked while tracing
    with pytest.raises(QCompileError, match=r"does not run with axes \[1\] of x at another size .* \(x \[1, 11, 16\]\): its Add fails: .*11 by 12") as error:
        build_onnx(graph)
    assert "positional table" in error.value.hint
    with pytest.raises(LoweringError, match=r"cannot keep axes \[1\] of x dynamic \(FixedLengthTagger\)"):
        lower(model, example, frontend="export", dynamic_axes=(1,))
    with pytest.raises(QCompileError, match="no model input has that axis"):
        lower(model, example, dynamic_axes=(3,))
    with pytest.raises(QCompileError, match="axes after the batch"):
        lower(model, example, dynamic_axes=(0,))


def test_a_model_lowered_at_its_longest_length_exports(tmp_path):
    # the check runs one shorter: a position table of 16 takes 15 ids, not 17
    torch.manual_seed(0)
    model = TokenClassifier(longest=16).eval()
    graph = lower(model, (_ids(1, 16, 0),), dynamic_axes=(1,))
    run_pipeline(graph, "fuse")
    exported = OnnxModel(export_onnx(graph, tmp_path / "model.onnx"))
    ids = _ids(2, 9, 1)
    with torch.no_grad():
        torch.testing.assert_close(exported(ids), model(ids), rtol=1e-4, atol=1e-5)


def test_dynamic_axes_from_the_command_line(tmp_path):
    torch.save({"ids": _ids(64, 12, 0)}, tmp_path / "ids.pt")
    out = tmp_path / "out"
    run = qcompile("tests.models:TokenClassifier", "--passes", "ptq", "--calib", tmp_path / "ids.pt",
                   "--dynamic-axes", "1", "--export", "onnx", "-o", out)
    assert run.returncode == 0, run.stderr
    assert _declared(out / "model.onnx") == ["batch", "ids_axis1"]
    assert OnnxModel(out / "model.onnx")(_ids(2, 30, 1)).shape == (2, 3)
    run = qcompile("tests.models:FixedLengthTagger", "--passes", "fuse", "--input-shape", "1,12,16",
                   "--dynamic-axes", "1", "--export", "onnx", "-o", tmp_path / "fixed")
    assert run.returncode != 0 and "does not run with axes [1] of x" in run.stderr
    assert not (tmp_path / "fixed").exists()  # refused before anything was written
    run = qcompile("tests.models:FixedLengthTagger", "--dynamic-axes", "one", "-o", tmp_path / "bad")
    assert run.returncode != 0 and "is not a list of axes" in run.stderr


def test_token_id_example_inputs_from_the_command_line(tmp_path):
    run = qcompile("tests.models:TokenClassifier", "--passes", "dynamic", "--input-shape", "1,12:int64",
                   "--dynamic-axes", "1", "--export", "onnx", "-o", tmp_path / "out")
    assert run.returncode == 0, run.stderr
    assert OnnxModel(tmp_path / "out" / "model.onnx")(_ids(3, 7, 2)).shape == (3, 3)
    run = qcompile("tests.models:TokenClassifier", "--passes", "dynamic", "--input-shape", "1,12", "-o", tmp_path / "f")
    assert run.returncode != 0 and "--input-shape 1,128:int64" in run.stderr  # float examples: the hint says how
    run = qcompile("tests.models:TokenClassifier", "--passes", "fuse", "--input-shape", "1,12:int8", "-o", tmp_path / "bad")
    assert run.returncode != 0 and "unknown element type 'int8'" in run.stderr


@pytest.mark.parametrize("pipeline", ["dynamic", "fuse,calibrate,convert{backend=native},dynamic{ops=embedding}"])
@pytest.mark.parametrize("form", ["qdq", "qoperator"])
def test_int8_embedding_tables_export_and_pass_the_check(pipeline, form, tmp_path):
    from qcompile.onnx.runtime.check import check_onnx, output_scale

    torch.manual_seed(0)
    model = TokenClassifier().eval()
    calib = [(_ids(8, 12, seed),) for seed in range(4)]
    graph = lower(model, (calib[0][0][:1],), dynamic_axes=(1,))
    run_pipeline(graph, pipeline, PassContext(calib_data=calib, quant_config=QuantConfig.from_preset("x86")))
    assert [n.target for n in graph.find(op="embedding")] == ["torch.ao.nn.quantized.Embedding"] * 2
    write_model(graph, tmp_path / "model")
    native = load_model(tmp_path / "model")
    path = export_onnx(graph, tmp_path / "model.onnx", form=form)
    check_onnx(path, native, calib, output_scale(graph), graph=graph)  # raises if onnxruntime disagrees
    ids = _ids(4, 20, 7)
    with torch.no_grad():
        assert sqnr(OnnxModel(path)(ids), model(ids)) > 20


def _features(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 6, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_dynamic_axes_of_one_named_input(frontend, tmp_path):
    # axis 1 varies in the ids, not in the features beside them
    torch.manual_seed(0)
    model = TokensAndFeatures(branch="side").eval()  # torch.export cannot lower a child called meta (tested below)
    example = (_ids(1, 12, 0), _features(1, 0))
    graph = lower(model, example, frontend=frontend, dynamic_axes={"ids": [1]})
    assert graph.attrs["dynamic_axes"] == {"ids": [1]}
    path = export_onnx(graph, tmp_path / "model.onnx")
    inputs = onnx.load(str(path)).graph.input
    assert [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in inputs] == [
        ["batch", "ids_axis1"], ["batch", 6]]
    exported = OnnxModel(path)
    for length in (3, 12, 20):
        ids, features = _ids(4, length, length), _features(4, length)
        with torch.no_grad():
            torch.testing.assert_close(exported(ids, features), model(ids, features), rtol=1e-4, atol=1e-5)
    # axis 1 of every input: the features' is fixed by the linear layer, and the error says which
    with pytest.raises(QCompileError, match=r"does not run with axes \[1\] of ids, features at .*its Gemm fails"):
        build_onnx(lower(model, example, dynamic_axes=(1,)))
    with pytest.raises(QCompileError, match=r"dynamic axes for 'mask': the model's inputs are ids, features"):
        lower(model, example, dynamic_axes={"mask": [1]})
    with pytest.raises(QCompileError, match=r"input 'features' does not have that axis"):
        lower(model, example, dynamic_axes={"features": [2]})


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_inputs_whose_lengths_vary_independently(frontend, tmp_path):
    # example lengths that differ get a symbol each in torch.export, so the lengths need not agree
    torch.manual_seed(0)
    model = TwoLengths().eval()
    graph = lower(model, (_ids(1, 12, 0), _ids(1, 7, 1)), frontend=frontend, dynamic_axes=(1,))
    assert graph.attrs["dynamic_axes"] == {"source": [1], "target": [1]}
    exported = OnnxModel(export_onnx(graph, tmp_path / "model.onnx"))
    for source, target in ((5, 9), (12, 3), (2, 2)):
        a, b = _ids(3, source, source), _ids(3, target, 50 + target)
        with torch.no_grad():
            torch.testing.assert_close(exported(a, b), model(a, b), rtol=1e-4, atol=1e-5)


def test_a_child_named_as_a_graph_module_attribute(tmp_path):
    # torch.fx keeps GraphModule.meta for itself; fx lowering renames the child, torch.export says why it fails
    torch.manual_seed(0)
    model = TokensAndFeatures().eval()
    example = (_ids(2, 12, 0), _features(2, 0))
    graph = lower(model, example)
    assert len(graph.find(kind=NodeKind.MODULE)) == 3  # tokens, meta, head
    write_model(graph, tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "out")(*example), model(*example))
    with pytest.raises(LoweringError, match=r"TokensAndFeatures's self.meta has a name torch.fx's GraphModule keeps"):
        lower(model, example, frontend="export")


def test_named_dynamic_axes_from_the_command_line(tmp_path):
    out = tmp_path / "out"
    run = qcompile("tests.models:TokensAndFeatures", "--passes", "fuse", "--input-shape", "1,12:int64", "--input-shape", "1,6",
                   "--dynamic-axes", "ids:1", "--export", "onnx", "-o", out)
    assert run.returncode == 0, run.stderr
    assert OnnxModel(out / "model.onnx")(_ids(2, 30, 1), _features(2, 1)).shape == (2, 3)
    run = qcompile("tests.models:TokensAndFeatures", "--passes", "fuse", "--input-shape", "1,12:int64", "--input-shape", "1,6",
                   "--dynamic-axes", "1,ids:1", "-o", tmp_path / "bad")
    assert run.returncode != 0 and "mixes axes for every input with axes for named inputs" in run.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_inputs_the_model_does_not_read_or_leaves_at_their_default(frontend):
    # fx keeps an input defaulting to None, torch.export drops it: the axes still land on the right inputs
    class Partial(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x, unused, y=None):
            return self.linear(x)

    example = (torch.randn(1, 3, 4), torch.randn(1, 5))
    assert "dynamic_axes" not in lower(Partial(), example, frontend=frontend).attrs
    graph = lower(Partial(), example, frontend=frontend, dynamic_axes={"x": [1]})
    assert graph.attrs["dynamic_axes"] == {"x": [1]}
