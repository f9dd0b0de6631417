"""Narrow int8 convolutions rewritten for onnxruntime (qcompile.onnx.runtime.narrow_convs): same outputs, measured choice."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torchvision
from onnx import numpy_helper

from qcompile.data import open_data
from qcompile.errors import QCompileError
from qcompile.frontend.loaders import load_model as load_user_model
from qcompile.frontend.lower import lower
from qcompile.onnx.export import export_onnx
from qcompile.onnx.runtime.narrow_convs import BATCHES, GAIN, recorded
from qcompile.onnx.runtime.session import OnnxModel
from qcompile.pipeline import PassContext, run_pipeline
from qcompile.quant.config import QuantConfig
from tests.pipelines import NATIVE_PTQ
from tests.test_cli import qcompile


def _int8_graph(model, data: str, limit: int):
    batches = [b[0] for b in open_data(data, batch_size=16, limit=limit)]
    graph = lower(model, (batches[0][:1],))
    run_pipeline(graph, NATIVE_PTQ, PassContext(calib_data=[(b,) for b in batches],
                                           quant_config=QuantConfig.from_preset("x86")))
    return graph, torch.cat(batches)


def _digit_cnn(limit: int = 64):
    return _int8_graph(load_user_model("zoo:digit_cnn").module, "builtin:mnist5k", limit)


def _conv_weight_channels(model: onnx.ModelProto) -> list[int]:
    """The input channels of every 4-D int8 weight."""
    return [int(i.dims[1]) for i in model.graph.initializer
            if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]


def _rewritten_exports_agree(graph, x, tmp_path, form: str, mode: str) -> onnx.ModelProto:
    plain = export_onnx(graph, tmp_path / f"plain_{form}.onnx", form=form, narrow_convs="plain")
    rewritten = export_onnx(graph, tmp_path / f"{mode}_{form}.onnx", form=form, narrow_convs=mode)
    assert torch.equal(OnnxModel(plain)(x), OnnxModel(rewritten)(x))
    model = onnx.load(str(rewritten))
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    read = {name for n in model.graph.node for name in n.input} | {o.name for o in model.graph.output}
    assert [i.name for i in model.graph.initializer if i.name not in read] == []  # the replaced weight is gone
    assert [n.name for n in model.graph.node if not read & set(n.output)] == []  # and its DequantizeLinear
    return model


@pytest.mark.parametrize("form", ["qdq", "qoperator"])
def test_padding_the_grey_input_conv_keeps_every_output(tmp_path, form):
    graph, x = _digit_cnn(256)
    model = _rewritten_exports_agree(graph, x, tmp_path, form, "pad")
    pads = [n for n in model.graph.node if n.op_type == "Pad"]
    assert len(pads) == 1  # only the first conv reads 1 channel; the others are multiples of 4
    amounts = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == pads[0].input[1]))
    assert amounts.tolist() == [0, 0, 0, 0, 0, 3, 0, 0]
    assert all(c % 4 == 0 for c in _conv_weight_channels(model))
    assert [r.describe() for r in recorded(model)] == ["conv_layers_0 (1 input channels): padded to 4 channels"]


def test_space_to_depth_applies_to_stride_two_only(tmp_path):
    graph, _ = _digit_cnn()  # stride-1 convolutions: nothing to rewrite, the file stays plain
    model = onnx.load(str(export_onnx(graph, tmp_path / "s2d.onnx", narrow_convs="space-to-depth")))
    assert [r.choice for r in recorded(model)] == ["plain"]
    assert not any(n.op_type == "SpaceToDepth" for n in model.graph.node)


@pytest.mark.parametrize("form", ["qdq", "qoperator"])
def test_resnet_stem_as_space_to_depth_keeps_every_output(tmp_path, form):
    """ResNet's 7x7 stride-2 stem over RGB (padding 3, odd) as a 4x4 stride-1 convolution over 12 channels."""
    torch.manual_seed(0)
    graph, x = _int8_graph(torchvision.models.resnet18().eval(), "builtin:photos", 16)
    model = _rewritten_exports_agree(graph, x, tmp_path, form, "space-to-depth")
    assert sum(n.op_type == "SpaceToDepth" for n in model.graph.node) == 1
    stem = next(numpy_helper.to_array(i) for i in model.graph.initializer
                if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4 and i.dims[1] == 12)
    assert stem.shape == (64, 12, 4, 4)
    assert np.count_nonzero(stem) <= 64 * 3 * 7 * 7  # the original taps, zeros elsewhere
    assert [r.describe() for r in recorded(model)] == [
        "conv1 (3 input channels): space-to-depth (12 channels, stride 1)"]


def test_auto_keeps_the_fastest_form_it_measured(tmp_path):
    torch.manual_seed(0)
    graph, _ = _int8_graph(torchvision.models.resnet18().eval(), "builtin:photos", 16)
    model = onnx.load(str(export_onnx(graph, tmp_path / "auto.onnx")))  # auto is the default
    [record] = recorded(model)
    times = record.times_ms
    assert set(times) == {"plain", "pad", "space-to-depth"}
    assert all(len(t) == len(BATCHES) and min(t) > 0 for t in times.values())
    best = min(times, key=record.relative)
    assert record.choice == (best if record.relative(best) < GAIN else "plain")
    ops = {n.op_type for n in model.graph.node}
    assert ("Pad" in ops) == (record.choice == "pad")
    assert ("SpaceToDepth" in ops) == (record.choice == "space-to-depth")


def test_measure_keeps_a_rewrite_only_where_the_whole_model_is_measurably_faster(tmp_path):
    graph, x = _digit_cnn()
    path = export_onnx(graph, tmp_path / "measured.onnx", narrow_convs="measure", batch=4)
    [record] = recorded(onnx.load(str(path)))
    assert record.batch == 4 and record.times_ms is None and set(record.speedup) == {"pad"}
    ratio, low, high, pairs = record.speedup["pad"]
    assert 0 < low <= ratio <= high and pairs in (60, 120, 180, 240)
    if low <= 1 <= high:
        assert pairs == 240  # timed on until the interval leaves 1, or 240 pairs
    assert record.choice == ("pad" if low > 1 else "plain")
    assert "whole model in onnxruntime, this machine, batch 4, speed-up over plain: pad" in record.describe()
    plain = export_onnx(graph, tmp_path / "plain.onnx", narrow_convs="plain")
    assert torch.equal(OnnxModel(plain)(x), OnnxModel(path)(x))


def test_cli_refuses_a_batch_or_thread_count_under_one(tmp_path):
    for option in ("--onnx-batch", "--onnx-threads"):
        run = qcompile("zoo:digit_cnn", "--passes", "ptq", "--calib", "builtin:mnist5k", "--export", "onnx",
                       "--onnx-narrow-convs", "measure", option, "0", "-o", tmp_path / "out")
        assert run.returncode == 2 and f"argument {option}: must be at least 1, got 0" in run.stderr
        assert not (tmp_path / "out").exists()


def test_plain_leaves_the_file_as_the_graph_is(tmp_path):
    graph, _ = _digit_cnn()
    model = onnx.load(str(export_onnx(graph, tmp_path / "plain.onnx", narrow_convs="plain")))
    assert recorded(model) == [] and not any(n.op_type == "Pad" for n in model.graph.node)
    assert min(_conv_weight_channels(model)) == 1


def test_unknown_mode_is_refused_before_writing(tmp_path):
    graph, _ = _digit_cnn(32)
    with pytest.raises(QCompileError, match="unknown narrow-convolution mode 'sometimes'") as error:
        export_onnx(graph, tmp_path / "m.onnx", narrow_convs="sometimes")
    assert "auto, measure, pad, space-to-depth, plain" in error.value.hint
    assert not (tmp_path / "m.onnx").exists()


def test_cli_reports_each_decision(tmp_path):
    out = tmp_path / "int8"
    run = qcompile("zoo:digit_cnn", "--passes", "ptq", "--calib", "builtin:mnist5k", "--calib-samples", "64",
                   "--export", "onnx", "--onnx-narrow-convs", "pad", "-o", out)
    assert run.returncode == 0, run.stderr
    assert "qcompile: onnx: conv_layers_0 (1 input channels): padded to 4 channels" in run.stderr
    run = qcompile("zoo:digit_cnn", "--passes", "ptq", "--calib", "builtin:mnist5k", "--calib-samples", "64",
                   "--export", "onnx", "--onnx-narrow-convs", "often", "-o", tmp_path / "bad")
    assert run.returncode == 2 and "invalid choice: 'often'" in run.stderr


@pytest.mark.slow
@pytest.mark.parametrize("form", ["qdq", "qoperator"])
@pytest.mark.parametrize("mode", ["pad", "space-to-depth"])
def test_mobilenet_v2_stem_rewritten_keeps_every_output(tmp_path, form, mode):
    """MobileNetV2's 3x3 stride-2 stem over RGB (padding 1). Only the stem changes; the 52 other
    convolutions are aligned."""
    graph, x = _int8_graph(load_user_model("zoo:mobilenet_v2").module, "builtin:photos", 32)
    model = _rewritten_exports_agree(graph, x, tmp_path, form, mode)
    [record] = recorded(model)
    assert record.layer == "features_0_0" and record.choice == mode
    shapes = [tuple(i.dims) for i in model.graph.initializer
              if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4 and i.dims[1] in (4, 12)]
    assert shapes == [(32, 4, 3, 3)] if mode == "pad" else shapes == [(32, 12, 2, 2)]
