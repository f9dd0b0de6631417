"""Padding narrow int8 convolutions for onnxruntime (qcompile.onnx.channel_pad): same outputs, measured choice."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from qcompile.data import open_data
from qcompile.errors import QCompileError
from qcompile.frontend.loaders import load_model as load_user_model
from qcompile.frontend.lower import lower
from qcompile.onnx.channel_pad import GAIN, recorded
from qcompile.onnx.export import export_onnx
from qcompile.onnx.session import OnnxModel
from qcompile.pipeline import PassContext, run_pipeline
from qcompile.quant.config import QuantConfig
from tests.test_cli import qcompile


def _int8_graph(zoo: str, data: str, limit: int):
    batches = [b[0] for b in open_data(data, batch_size=16, limit=limit)]
    graph = lower(load_user_model(zoo).module, (batches[0][:1],))
    run_pipeline(graph, "ptq", PassContext(calib_data=[(b,) for b in batches],
                                           quant_config=QuantConfig.from_preset("x86")))
    return graph, torch.cat(batches)


def _conv_weight_channels(model: onnx.ModelProto) -> list[int]:
    """The input channels of every 4-D int8 weight."""
    return [int(i.dims[1]) for i in model.graph.initializer
            if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]


def _padded_exports_agree(graph, x, tmp_path, form: str) -> onnx.ModelProto:
    plain = export_onnx(graph, tmp_path / f"plain_{form}.onnx", form=form, pad_channels="never")
    padded = export_onnx(graph, tmp_path / f"padded_{form}.onnx", form=form, pad_channels="always")
    assert torch.equal(OnnxModel(plain)(x), OnnxModel(padded)(x))  # the extra channel is the zero point x 0
    return onnx.load(str(padded))


@pytest.mark.parametrize("form", ["qdq", "qoperator"])
def test_padding_the_grey_input_conv_keeps_every_output(tmp_path, form):
    graph, x = _int8_graph("zoo:digit_cnn", "builtin:mnist5k", 256)
    model = _padded_exports_agree(graph, x, tmp_path, form)
    pads = [n for n in model.graph.node if n.op_type == "Pad"]
    assert len(pads) == 1  # only the first conv reads 1 channel; the others are multiples of 4
    amounts = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == pads[0].input[1]))
    assert amounts.tolist() == [0, 0, 0, 0, 0, 3, 0, 0]
    assert all(c % 4 == 0 for c in _conv_weight_channels(model))
    assert [r.describe() for r in recorded(model)] == ["conv_layers_0: input channels 1 -> 4"]
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)


def test_auto_pads_only_where_it_measured_a_gain(tmp_path):
    graph, _ = _int8_graph("zoo:digit_cnn", "builtin:mnist5k", 64)
    model = onnx.load(str(export_onnx(graph, tmp_path / "auto.onnx")))  # auto is the default
    [record] = recorded(model)
    assert record.plain_ms > 0 and record.padded_ms > 0
    assert record.padded == (record.padded_ms < GAIN * record.plain_ms)
    assert any(n.op_type == "Pad" for n in model.graph.node) == record.padded
    assert min(_conv_weight_channels(model)) == (4 if record.padded else 1)


def test_never_leaves_the_file_as_the_graph_is(tmp_path):
    graph, _ = _int8_graph("zoo:digit_cnn", "builtin:mnist5k", 64)
    model = onnx.load(str(export_onnx(graph, tmp_path / "never.onnx", pad_channels="never")))
    assert recorded(model) == [] and not any(n.op_type == "Pad" for n in model.graph.node)
    assert min(_conv_weight_channels(model)) == 1


def test_unknown_mode_is_refused_before_writing(tmp_path):
    graph, _ = _int8_graph("zoo:digit_cnn", "builtin:mnist5k", 32)
    with pytest.raises(QCompileError, match="unknown channel padding mode 'sometimes'") as error:
        export_onnx(graph, tmp_path / "m.onnx", pad_channels="sometimes")
    assert "auto, always or never" in error.value.hint
    assert not (tmp_path / "m.onnx").exists()


def test_cli_reports_each_decision(tmp_path):
    out = tmp_path / "int8"
    run = qcompile("zoo:digit_cnn", "--passes", "ptq", "--calib", "builtin:mnist5k", "--calib-samples", "64",
                   "--export", "onnx", "--onnx-pad-channels", "always", "-o", out)
    assert run.returncode == 0, run.stderr
    assert "qcompile: onnx: conv_layers_0: input channels 1 -> 4" in run.stderr
    run = qcompile("zoo:digit_cnn", "--passes", "ptq", "--calib", "builtin:mnist5k", "--calib-samples", "64",
                   "--export", "onnx", "--onnx-pad-channels", "often", "-o", tmp_path / "bad")
    assert run.returncode == 2 and "invalid choice: 'often'" in run.stderr


@pytest.mark.slow
@pytest.mark.parametrize("form", ["qdq", "qoperator"])
def test_mobilenet_v2_stem_padded_keeps_every_output(tmp_path, form):
    """The case the padding is for: MobileNetV2's 3x3 stem over RGB (onnxruntime's indirect convolution
    needs a multiple of 4 channels). Only the stem changes; the 52 other convolutions are aligned."""
    graph, x = _int8_graph("zoo:mobilenet_v2", "builtin:photos", 32)
    model = _padded_exports_agree(graph, x, tmp_path, form)
    assert [r.describe() for r in recorded(model)] == ["features_0_0: input channels 3 -> 4"]
    assert sum(n.op_type == "Pad" for n in model.graph.node) == 1
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    stem = next(w for name, w in weights.items() if w.ndim == 4 and w.shape[1] == 4)
    assert stem.shape == (32, 4, 3, 3) and not np.any(stem[:, 3])
