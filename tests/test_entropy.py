"""Entropy of the integer codes (the paper's variable-length-coding measure)."""

from __future__ import annotations

import torch

from qcompile.data import open_data
from qcompile.frontend.loaders import load_model
from qcompile.frontend.lower import lower
from qcompile.pipeline import PassContext, run_pipeline
from qcompile.quant.entropy import code_entropy, entropy_bits
from tests.test_cli import qcompile


def test_entropy_of_known_distributions():
    assert entropy_bits(torch.tensor([0, 1, 2, 3] * 5)) == 2.0
    assert entropy_bits(torch.zeros(10, dtype=torch.int8)) == 0.0
    assert abs(entropy_bits(torch.randint(0, 256, (200_000,))) - 8.0) < 0.01


def test_fewer_bits_and_clipping_lower_the_entropy():
    model = load_model("zoo:digit_cnn").module
    data = open_data("builtin:mnist5k", limit=256, batch_size=128)
    averages = []
    for pipeline in ("ptq", "fuse,calibrate,aciq{bits=4},convert{weight-bits=4}"):
        graph = lower(model, (torch.zeros(1, 1, 28, 28),))
        run_pipeline(graph, pipeline, PassContext(calib_data=data))
        rows, average = code_entropy(graph, data)
        assert {r.kind for r in rows} == {"activation", "weight"}
        assert all(0 <= r.bits <= 8 for r in rows)
        averages.append(average)
    assert averages[1] < averages[0] <= 8


def test_entropy_from_the_command_line(tmp_path):
    run = qcompile("zoo:digit_cnn", "--passes", "ptq", "--calib", "builtin:mnist5k", "--calib-samples", "128",
                   "--entropy", "-o", tmp_path / "out")
    assert run.returncode == 0, run.stderr
    assert "| conv_layers_0 | weight |" in run.stdout and "| all | weighted by values |" in run.stdout


def test_both_backends_have_the_same_codes_and_entropy():
    data = open_data("builtin:mnist5k", limit=128, batch_size=64)
    results = {}
    for backend in ("native", "gemmlowp"):
        graph = lower(load_model("zoo:digit_cnn").module, (torch.zeros(1, 1, 28, 28),))
        run_pipeline(graph, f"fuse,stubs,observe{{activation-grid=preset}},calibrate,convert{{backend={backend}}}",
                     PassContext(calib_data=data))
        results[backend] = code_entropy(graph, [b[0] for b in data])
    (native_rows, native_bits), (gemmlowp_rows, gemmlowp_bits) = results.values()
    assert len(native_rows) == len(gemmlowp_rows) == 11 and native_bits > 1.0  # 6 activations, 5 weights
    weights = {r.name: r.bits for r in native_rows if r.kind == "weight"}
    assert weights == {r.name: r.bits for r in gemmlowp_rows if r.kind == "weight"}  # the same int8 weights
    assert abs(native_bits - gemmlowp_bits) < 0.01
