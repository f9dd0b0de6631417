"""Layer-by-layer codes of a QDQ export against qcompile's graph (qcompile.onnx.runtime.layer_agreement)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from qcompile.frontend.lower import lower
from qcompile.onnx.export import export_onnx
from qcompile.onnx.runtime.layer_agreement import explain, layer_agreement
from qcompile.pipeline import PassContext, run_pipeline
from qcompile.quant.config import QuantConfig
from tests.models import TokenClassifier
from tests.pipelines import NATIVE_PTQ


def _ids(n: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 100, (n, length), generator=torch.Generator().manual_seed(seed))


def _encoder(tmp_path, form: str = "qdq"):
    torch.manual_seed(0)
    model = TokenClassifier().eval()
    calib = [(_ids(16, 12, seed),) for seed in range(4)]
    graph = lower(model, (calib[0][0][:1],))
    run_pipeline(graph, NATIVE_PTQ, PassContext(calib_data=calib, quant_config=QuantConfig.from_preset("x86")))
    return graph, export_onnx(graph, tmp_path / "model.onnx", form=form), (_ids(64, 12, 99),)


@pytest.mark.parametrize("form", ["qdq", "qoperator"])
def test_every_quantized_value_is_compared_and_differences_start_as_rounding(form, tmp_path):
    graph, path, inputs = _encoder(tmp_path, form)
    rows = layer_agreement(path, graph, inputs)
    names = [r.node for r in rows]
    linears = [n.name for n in graph.nodes() if n.op == "linear"]
    assert set(linears) <= set(names) and names[-1] == "head"  # every linear, in the file's order
    assert all(0 <= r.beyond_one <= r.differ <= 1 and r.max_steps >= 0 for r in rows)
    assert rows[0].differ == 0  # the embeddings' sum: no integer arithmetic yet
    first = next((r for r in rows if r.differ > 0), None)
    if first is not None:  # kernels that round every tie alike would agree everywhere
        assert first.max_steps == 1
        strict = explain(rows, min_share=1.0)  # any code more than a step off at the end counts
        assert strict is None or (strict.text.startswith(f"the codes agree exactly up to %{first.node}, where")
                                  and strict.text.endswith("rounding, not a wrong layer") and not strict.wrong_layer)
        assert explain(rows, min_share=0.0) is None  # nothing to explain: the file agrees with the graph


@pytest.mark.parametrize("form", ["qdq", "qoperator"])
def test_a_wrong_layer_is_named(form, tmp_path):
    graph, path, inputs = _encoder(tmp_path, form)
    model = onnx.load(str(path))
    first_linear = next(n.name for n in graph.nodes() if n.op == "linear")
    if form == "qdq":
        weight = next(i for i in model.graph.initializer if i.name.startswith(f"{first_linear}_weight_q__"))
    else:  # linears as 1x1 QLinearConvs, in graph order; the weight is the fourth input
        conv = next(n for n in model.graph.node if n.op_type == "QLinearConv")
        weight = next(i for i in model.graph.initializer if i.name == conv.input[3])
    codes = numpy_helper.to_array(weight)
    wrong = np.clip(codes.astype(np.int16) + 40, -127, 127).astype(np.int8)  # as if the exporter mis-wrote it
    weight.CopyFrom(numpy_helper.from_array(wrong, weight.name))
    onnx.save(model, str(path))
    rows = layer_agreement(path, graph, inputs)
    first = next(r for r in rows if r.differ > 0)
    assert first.node == first_linear and first.max_steps > 1 and first.differ > 0.5
    finding = explain(rows)
    assert finding.wrong_layer and finding.text.startswith(
        f"the first quantized value whose codes differ, %{first_linear}, is up to")
    assert "a bug in the exporter or a kernel at that layer" in finding.text


def test_the_decision_rule():
    from qcompile.onnx.runtime.layer_agreement import LayerAgreement as Row

    exact, stem = Row("stem", 0.0, 0.0, 0), Row("conv", 0.001, 0.0, 1)
    assert explain([exact, Row("head", 0.0, 0.0, 0)]) is None  # nothing differs
    amplified = explain([exact, stem, Row("head", 0.3, 0.05, 4)])  # rounding that grows past 1% off by 2+
    assert not amplified.wrong_layer and amplified.text == ("the codes agree exactly up to %conv, where 0.10% are one step apart (the two "
                         "implementations round ties differently), and this model amplifies that to 30.00% of "
                         "%head's codes (5.00% more than one step off, max 4): rounding, not a wrong layer")
    assert explain([exact, stem, Row("head", 0.3, 0.005, 2)]) is None  # within the check: not this file's fault
    assert explain([exact, Row("conv", 0.2, 0.1, 9)]).wrong_layer
