"""The command's options: what the arguments decide is settled once, and each data set is opened once."""

from __future__ import annotations

import pytest
import torch

from qcompile.cli.main import _build_parsers
from qcompile.cli.options import RunOptions
from qcompile.data.sources import OpenedData, open_data
from qcompile.errors import QCompileError
from tests.test_cli import qcompile


def _settled(*argv: str) -> RunOptions:
    return RunOptions.settle(_build_parsers()["compile"].parse_args(["zoo:digit_cnn", "-o", "OUT", *argv]), "compile")


def _convert(options: RunOptions):
    return next(p for p in options.pipeline.passes if p.name == "convert")


def test_the_pipeline_is_parsed_once_with_the_backend_the_outputs_need():
    options = _settled("--calib", "builtin:mnist5k")
    assert str(options.pipeline) == "fuse,equalize,stubs,observe,calibrate,convert" and _convert(options).backend == "auto"
    assert _convert(_settled("--calib", "builtin:mnist5k", "--deploy", "export")).backend == "gemmlowp"
    qoperator = _settled("--passes", "ptq", "--export", "onnx", "--onnx-form", "qoperator")
    assert _convert(qoperator).backend == "native"
    assert _convert(_settled("--passes", "ptq", "--backend", "native", "--deploy", "torchscript")).backend == "native"
    with pytest.raises(QCompileError, match="gemmlowp backend export in QDQ form only"):
        _settled("--passes", "ptq", "--backend", "gemmlowp", "--export", "onnx", "--onnx-form", "qoperator")
    with pytest.raises(QCompileError, match="--check compares the ONNX export"):
        _settled("--passes", "ptq", "--check")
    with pytest.raises(QCompileError, match="--backend auto is for convert"):
        _settled("--passes", "fuse,calibrate,integerize,lower{backend=gemmlowp}", "--backend", "auto")
    with pytest.raises(QCompileError, match="--print-after adaround: no such pass"):
        _settled("--passes", "ptq", "--print-after", "adaround")


def test_an_opened_data_set_is_viewed_not_opened_again():
    opened = OpenedData()
    calibration = opened("builtin:mnist5k", limit=256, batch_size=64)
    rest = opened("builtin:mnist5k", skip=256, batch_size=64)
    assert opened.opened == 1 and calibration.num_samples == 256
    fresh = open_data("builtin:mnist5k", skip=256, batch_size=64)
    assert rest.num_samples == fresh.num_samples
    assert torch.equal(rest.load_samples(0, 3), fresh.load_samples(0, 3))
    with pytest.raises(QCompileError, match="is empty"):
        opened("builtin:mnist5k", skip=10**6, batch_size=64)


_DATA_FUNCTION = '''
from pathlib import Path

import torch


def digits():
    with open(Path(__file__).with_name("calls.txt"), "a") as f:
        f.write("x")
    g = torch.Generator().manual_seed(0)
    return torch.rand(96, 1, 28, 28, generator=g)
'''


def test_a_compile_runs_the_users_data_function_once(tmp_path):
    (tmp_path / "userdata.py").write_text(_DATA_FUNCTION)
    # read by calibration, the verdict (after the 64 calibrated on), the ONNX check and the entropy report
    run = qcompile("zoo:digit_cnn", "--calib", "userdata:digits", "--calib-samples", "64", "--export", "onnx",
                   "--check", "--entropy", "-o", tmp_path / "out", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "after the 64 calibrated on" in run.stderr
    assert (tmp_path / "calls.txt").read_text() == "x"
