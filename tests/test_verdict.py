"""The verdict after a compile, held to numbers computed here without it, on the digit CNN and MNIST digits."""

from __future__ import annotations

import importlib.util
import io
import json
import math

import torch

from qcompile.data import open_data
from qcompile.verdict import Verdict, advise
from qcompile.zoo import load_zoo_model
from tests.test_cli import qcompile

CALIBRATED, SCORED = 256, 100


def _emitted(out):
    spec = importlib.util.spec_from_file_location("verdict_emitted", out / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load(out / "weights.pt").eval()


def test_the_verdicts_numbers_match_an_independent_computation(tmp_path):
    out = tmp_path / "out"
    run = qcompile("zoo:digit_cnn", "--passes", "ptq", "--calib", "builtin:mnist5k", "--calib-samples", CALIBRATED,
                   "--check-samples", SCORED, "-o", out, "--json")
    assert run.returncode == 0, run.stderr
    verdict = json.loads(run.stdout)
    assert json.loads((out / "verdict.json").read_text()) == verdict

    # the samples after the calibrated ones, SCORED of them evenly spaced
    whole = open_data("builtin:mnist5k", batch_size=5000)
    (x, y), = list(whole.labelled())
    rest_x, rest_y = x[CALIBRATED:], y[CALIBRATED:]
    picks = torch.linspace(0, len(rest_x) - 1, SCORED).round().long()
    x, y = rest_x[picks], rest_y[picks]
    float_model = load_zoo_model("digit_cnn").module.eval()  # a fresh copy: the compile must not change it
    emitted = _emitted(out)
    with torch.no_grad():  # in batches of 32, as the verdict runs them (float results depend on the batch)
        reference = torch.cat([float_model(part) for part in x.split(32)])
        quantized = torch.cat([emitted(part) for part in x.split(32)])
    noise = (quantized.double() - reference.double()).pow(2).sum()
    assert verdict["samples"] == SCORED and verdict["held_out"] is True
    assert verdict["data"] == f"{SCORED} samples of builtin:mnist5k after the {CALIBRATED} calibrated on"
    assert math.isclose(verdict["sqnr_db"], float(10 * torch.log10(reference.double().pow(2).sum() / noise)),
                        rel_tol=1e-9)
    assert verdict["agreement"] == float((quantized.argmax(1) == reference.argmax(1)).float().mean())
    assert verdict["float_top1"] == float((reference.argmax(1) == y).float().mean())
    assert verdict["quantized_top1"] == float((quantized.argmax(1) == y).float().mean())
    buffer = io.BytesIO()
    torch.save(float_model.state_dict(), buffer)
    assert verdict["float_bytes"] == buffer.tell()
    assert verdict["quantized_bytes"] == (out / "weights.pt").stat().st_size
    assert verdict["float_ms"] > 0 and verdict["quantized_ms"] > 0
    assert math.isclose(verdict["speedup"], verdict["float_ms"] / verdict["quantized_ms"])
    assert "qcompile's gemmlowp kernels" in verdict["kernels"] and verdict["float_layers"] == []
    lines = [line for line in run.stderr.splitlines() if line.startswith("qcompile: verdict:")]
    assert lines[0] == (f"qcompile: verdict: size: {verdict['float_bytes'] / 1e6:.2f} MB float -> "
                        f"{verdict['quantized_bytes'] / 1e6:.2f} MB "
                        f"({verdict['float_bytes'] / verdict['quantized_bytes']:.1f}x smaller)")
    assert f"top-1 agreement {verdict['agreement']:.3f}, output SQNR {verdict['sqnr_db']:.1f} dB" in lines[1]


def test_skipped_layers_are_listed_with_the_reason(tmp_path):
    out = tmp_path / "out"
    run = qcompile("zoo:digit_cnn", "--passes", "ptq", "--calib", "builtin:mnist5k", "--calib-samples", "64",
                   "--skip", "op:linear", "-o", out, "--json")
    assert run.returncode == 0, run.stderr
    layers = json.loads(run.stdout)["float_layers"]
    assert {layer["op"] for layer in layers} == {"linear"} and len(layers) == 2
    assert all(layer["reason"].startswith("skipped by the config") for layer in layers)
    assert "left in float: 2 layers:" in run.stderr
    assert "float: skipped by the config" in (out / "graph.qir").read_text()  # the reason shows in the IR


def test_a_calibration_set_without_a_held_out_part_is_named_as_such(tmp_path):
    data = tmp_path / "digits.pt"
    whole = open_data("builtin:mnist5k", batch_size=48)
    torch.save({"x": next(iter(whole))[0]}, data)
    run = qcompile("zoo:digit_cnn", "--passes", "ptq", "--calib", data, "-o", tmp_path / "out", "--json")
    assert run.returncode == 0, run.stderr
    verdict = json.loads(run.stdout)
    assert verdict["held_out"] is False and verdict["samples"] == 48
    assert "(calibration saw them)" in run.stderr


def test_no_verdict_skips_it(tmp_path):
    out = tmp_path / "out"
    run = qcompile("zoo:digit_cnn", "--passes", "fuse", "-o", out, "--no-verdict")
    assert run.returncode == 0, run.stderr
    assert "qcompile: verdict:" not in run.stderr and not (out / "verdict.json").exists()


def test_without_passes_the_recommended_quantization_runs_and_says_so(tmp_path):
    out = tmp_path / "out"
    run = qcompile("zoo:digit_cnn", "--calib", "builtin:mnist5k", "--calib-samples", "64", "-o", out)
    assert run.returncode == 0, run.stderr
    assert ("no --passes given: running the recommended static quantization, ptq (fuse,equalize,calibrate,convert)"
            in run.stderr)
    assert "u8[1,10] {" in (out / "graph.qir").read_text() and "backend='gemmlowp'" in (out / "graph.qir").read_text()
    run = qcompile("zoo:digit_cnn", "-o", tmp_path / "none")
    assert run.returncode == 2 and "--calib DATA" in run.stderr and "--passes fuse" in run.stderr
    assert not (tmp_path / "none").exists()


def _verdict(**numbers) -> Verdict:
    base = dict(float_bytes=4, quantized_bytes=1, data="d", samples=10, held_out=True, agreement=0.99, sqnr_db=30.0,
                float_top1=None, quantized_top1=None, float_ms=2.0, quantized_ms=1.0, kernels="k", threads=1)
    return Verdict(**(base | numbers))


def test_advice_follows_the_poor_number():
    graph = load_zoo_model("digit_cnn")  # only its attributes and annotations are read
    from qcompile.frontend.lower import lower

    graph = lower(graph.module, graph.example_inputs, [])
    assert advise(_verdict(), graph, "fuse") is None  # a float graph: nothing to advise
    for node in graph.nodes():
        node.quant.mode = "static"
    graph.attrs["backend"] = "native"  # chosen by --backend native
    assert advise(_verdict(), graph, "ptq") is None
    native = advise(_verdict(agreement=0.7), graph, "fuse,calibrate,convert{backend=native}")
    assert "leave out --backend native" in native and "--passes ptq-accurate" in native
    assert "--passes ptq-accurate" in advise(_verdict(sqnr_db=12.0), graph, "fuse,calibrate,convert{backend=native}")
    assert "slower than float" in advise(_verdict(quantized_ms=3.0), graph, "ptq")
    graph.attrs["auto-backend"] = "native"  # chosen by backend=auto: qcompile's kernels do not cover the model
    fallback = advise(_verdict(agreement=0.7), graph, "ptq")
    assert "--backend" not in fallback and "--passes fuse,equalize,calibrate,aciq,convert" in fallback
    graph.attrs["backend"] = graph.attrs["auto-backend"] = "gemmlowp"
    plain = advise(_verdict(agreement=0.7), graph, "fuse,equalize,calibrate,convert")
    assert "--passes ptq-accurate" in plain and "--passes fuse,equalize,calibrate,bias-correct,convert" in plain
    assert "--sensitivity" in plain
    for tuned in ("aciq", "bias-correct"):
        after = advise(_verdict(agreement=0.7), graph, f"fuse,calibrate,{tuned},convert")
        assert "--passes ptq-accurate" in after and "in seconds" not in after
    learned = advise(_verdict(agreement=0.7), graph, "fuse,calibrate,adaround,convert{backend=gemmlowp}")
    assert "ptq-accurate" not in learned and "aciq" not in learned and "--sensitivity" in learned
    assert "--backend native" in advise(_verdict(quantized_ms=3.0), graph, "ptq")
    graph.attrs["backend"] = "reference"  # integerize alone: the reference modules, not kernels
    assert "lower{backend=gemmlowp}" in advise(_verdict(quantized_ms=3.0), graph, "fuse,calibrate,integerize")


def test_a_verdict_that_cannot_be_measured_says_why_and_the_model_stands(tmp_path):
    out = tmp_path / "out"
    run = qcompile("zoo:digit_cnn", "--passes", "fuse", "--check-data", tmp_path / "missing.pt", "-o", out)
    assert run.returncode == 0, run.stderr
    assert "qcompile: verdict: not measured: reading its data failed: QCompileError: data file" in run.stderr
    assert (out / "model.py").is_file() and not (out / "verdict.json").exists()
