"""The quantization workflows from the command line, and the bad inputs users send."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_cli import qcompile


def test_static_ptq_with_deploy_and_compare(tmp_path):
    out = tmp_path / "int8"
    run = qcompile("zoo:digit_cnn", "--passes", "fuse,calibrate,convert", "--calib", "builtin:mnist5k",
                   "--calib-samples", "256", "--preset", "x86", "-o", out, "--deploy", "torchscript",
                   "--export", "onnx")
    assert run.returncode == 0, run.stderr
    assert "pipeline expanded to: fuse,stubs,observe,calibrate,convert" in run.stderr
    assert "qcompile: calibrate: changed (batches: 8," in run.stderr
    assert (out / "model.torchscript.pt").is_file() and "identical within 0" in run.stderr
    assert "backend auto -> gemmlowp: 1" in run.stderr and "= dequantize" in (out / "graph.qir").read_text()
    assert "u8[1,10] {" in (out / "graph.qir").read_text()  # qcompile's kernels: plain uint8 codes
    dynamic = tmp_path / "dynamic"
    assert qcompile("zoo:digit_cnn", "--passes", "dynamic-int8", "-o", dynamic).returncode == 0
    table = tmp_path / "table.json"
    run = qcompile("compare", "zoo:digit_cnn", out, dynamic, out / "model.onnx", "--data", "builtin:mnist5k",
                   "--samples", "500", "--repeats", "3", "--json", table)
    assert run.returncode == 0, run.stderr
    assert "| float |" in run.stdout and "| int8 |" in run.stdout and "| dynamic |" in run.stdout
    rows = {r["name"]: r for r in json.loads(table.read_text())["rows"]}
    assert rows["float"]["top1"] > 0.97 and rows["int8"]["top1"] > 0.97
    assert rows["int8"]["size_mb"] < 0.3 * rows["float"]["size_mb"]
    assert rows["int8"]["agreement"] > 0.98
    exported = rows["int8/model.onnx (onnxruntime)"]  # the same int8 graph, run by onnxruntime
    assert exported["top1"] > 0.97 and exported["agreement"] > 0.98
    assert exported["size_mb"] < 0.3 * rows["float"]["size_mb"]


def test_qat_from_the_command_line(tmp_path):
    out = tmp_path / "qat"
    run = qcompile("tests.seed_models:FashionNet", "--passes", "qat-int8", "--train", "builtin:fashion-train",
                   "--train-samples", "640", "-o", out, "--input-shape", "1,1,28,28")
    assert run.returncode == 0, run.stderr
    assert "train: changed (epochs: 1" in run.stderr and "epoch 1: loss" in run.stderr
    assert "qcompile.kernels.modules.QConv2d" in (out / "model.py").read_text() and "backend auto -> gemmlowp" in run.stderr


def _npz(path, x):
    np.savez(path, x=x)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda p: _npz(p / "d.npz", np.zeros((4, 3, 28, 28), np.float32)), "has shape [4, 3, 28, 28]"),
    (lambda p: _npz(p / "d.npz", np.full((4, 1, 28, 28), np.nan, np.float32)), "contains NaN or Inf"),
    (lambda p: _npz(p / "d.npz", np.zeros((4, 1, 28, 28), np.float64)), "is torch.float64"),
    (lambda p: _npz(p / "d.npz", np.zeros((0, 1, 28, 28), np.float32)), "is empty"),
    (lambda p: p / "missing.npz", "does not exist"),
])
def test_bad_calibration_data(tmp_path, make, message):
    data = make(tmp_path)
    out = tmp_path / "out"
    run = qcompile("zoo:digit_cnn", "--passes", "ptq", "--calib", data, "-o", out)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--preset", "x68"], "unknown preset 'x68'"),
    (["--skip", "conv_layer_0"], "pattern 'conv_layer_0' in the quantization config matches no node"),
    (["--calib", "builtin:nope"], "no built-in data set 'nope'"),
    (["--preprocess", "imagenette", "--calib", "builtin:mnist5k"], "unknown preprocessing"),
])
def test_bad_config_exits_before_writing(tmp_path, args, message):
    out = tmp_path / "out"
    run = qcompile("zoo:digit_cnn", "--passes", "ptq", *args, "-o", out)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and not out.exists()


def test_calibrate_without_data_says_how(tmp_path):
    run = qcompile("zoo:digit_cnn", "--passes", "ptq", "-o", tmp_path / "out")
    assert run.returncode == 2 and "pass --calib DATA" in run.stderr


def test_export_onnx_and_check(tmp_path):
    out = tmp_path / "int8"
    run = qcompile("zoo:digit_cnn", "--passes", "ptq", "--calib", "builtin:mnist5k", "--calib-samples", "128",
                   "--export", "onnx", "--check", "-o", out)
    assert run.returncode == 0, run.stderr
    assert (out / "model.onnx").is_file() and "onnx.checker passed" in run.stderr
    assert "| off | 64 |" in run.stdout and "| on | 64 |" in run.stdout  # --check-samples 64


@pytest.mark.parametrize("args, message", [
    (["--calib", "builtin:mnist5k", "--calib-samples", "16", "--check"], "add --export onnx"),
    (["--export", "onnx", "--check"], "pass --check-data DATA"),
    # photos for a model of grey 28x28 digits: refused before the export is written, not after
    (["--export", "onnx", "--check", "--check-data", "builtin:photos"],
     "--check-data batch 0: input %x has shape [32, 3, 224, 224], the model expects [N, 1, 28, 28]"),
])
def test_check_without_its_export_or_data_exits_before_writing(tmp_path, args, message):
    out = tmp_path / "out"
    run = qcompile("zoo:digit_cnn", "--passes", "fuse", *args, "-o", out)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr and not out.exists()


def test_modes_data_of_the_wrong_shape_exits_before_writing(tmp_path):
    out = tmp_path / "out"
    run = qcompile("zoo:digit_cnn", "--passes", "fuse,calibrate,simulate{bits=4}", "--calib", "builtin:mnist5k",
                   "--calib-samples", "16", "--modes", "--check-data", "builtin:photos", "-o", out)
    assert run.returncode == 2, run.stderr
    assert "--check-data batch 0: input %x has shape [32, 3, 224, 224]" in run.stderr and not out.exists()


def test_statistics_file_replaces_the_data_in_a_later_run(tmp_path):
    stats = tmp_path / "stats.pt"
    first = qcompile("zoo:digit_cnn", "--passes", "fuse,calibrate,aciq,convert", "--calib", "builtin:mnist5k",
                     "--calib-samples", "128", "--save-stats", stats, "-o", tmp_path / "a")
    assert first.returncode == 0, first.stderr
    second = qcompile("zoo:digit_cnn", "--passes", "fuse,stubs,observe,load-stats,aciq,convert", "--stats", stats,
                      "-o", tmp_path / "b")
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "a" / "graph.qir").read_text() == (tmp_path / "b" / "graph.qir").read_text()
    mismatch = qcompile("zoo:mobilenet_v2", "--passes", "fuse,stubs,observe,load-stats,convert", "--stats", stats,
                        "-o", tmp_path / "c")
    assert mismatch.returncode == 2 and "has no statistics for" in mismatch.stderr


def test_modes_put_research_deployable_and_integer_side_by_side(tmp_path):
    out = tmp_path / "w4a4"
    passes = "fuse,calibrate,bitalloc{budget=4 activations=true},aciq{bits=4 per-channel=true},simulate{bits=4}"
    run = qcompile("zoo:digit_cnn", "--passes", passes, "--calib", "builtin:mnist5k", "--calib-samples", "256",
                   "--check-samples", "256", "--modes", "-o", out)
    assert run.returncode == 0, run.stderr
    assert "an integer deployment delivers the integer row" in run.stdout
    rows = {r["mode"]: r for r in json.loads((out / "modes.json").read_text())}
    assert list(rows) == ["research", "deployable", "integer"]
    assert "per-channel=true" in rows["research"]["pipeline"] and "activations=true" in rows["research"]["pipeline"]
    assert "per-channel" not in rows["deployable"]["pipeline"] and "convert" in rows["integer"]["pipeline"]
    assert all(0 <= r["agreement"] <= 1 and r["top1"] is not None for r in rows.values())
    assert len({r["sqnr_db"] for r in rows.values()}) == 3  # three different models were scored
    assert rows["integer"]["agreement"] > 0.9


def test_modes_need_a_simulate_pass(tmp_path):
    run = qcompile("zoo:digit_cnn", "--passes", "ptq", "--calib", "builtin:mnist5k", "--modes", "-o", tmp_path / "o")
    assert run.returncode == 2 and "no simulate pass" in run.stderr and not (tmp_path / "o").exists()


def test_compare_names_bad_onnx_variants(tmp_path):
    """Not an ONNX model, and an export for other inputs: each a clear error, not onnxruntime's traceback."""
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    run = qcompile("compare", "zoo:digit_cnn", junk, "--data", "builtin:mnist5k", "--samples", "64")
    assert run.returncode == 2 and "onnxruntime cannot load" in run.stderr and "Traceback" not in run.stderr
    out = tmp_path / "float"
    assert qcompile("zoo:digit_cnn", "--passes", "fuse", "-o", out, "--export", "onnx").returncode == 0
    run = qcompile("compare", "zoo:mobilenet_v2", out / "model.onnx", "--data", "builtin:photos", "--samples", "8")
    assert run.returncode == 2 and "takes inputs of shape [N, 1, 28, 28], not [8, 3, 224, 224]" in run.stderr
    assert "Traceback" not in run.stderr


def test_export_archive_with_a_fixed_batch_says_which_batch_size_it_takes(tmp_path):
    import torch

    from tests.seed_models import FashionNet

    archive = tmp_path / "fashion.pt2"
    torch.export.save(torch.export.export(FashionNet().eval(), (torch.randn(1, 1, 28, 28),)), archive)
    data = _npz(tmp_path / "d.npz", np.random.default_rng(0).random((4, 1, 28, 28), np.float32))
    out = tmp_path / "out"
    run = qcompile(archive, "--passes", "ptq", "--calib", data, "-o", out)
    assert run.returncode == 2, run.stderr
    assert "exported for batches of exactly 1" in run.stderr and "--batch-size 1" in run.stderr
    assert "Traceback" not in run.stderr and not out.exists()
    run = qcompile(archive, "--passes", "ptq", "--calib", data, "--batch-size", "1", "-o", out)
    assert run.returncode == 0, run.stderr
    assert "calibrate: changed (batches: 4" in run.stderr


@pytest.mark.parametrize("backend", ["native", "gemmlowp"])
def test_a_layer_kept_float_before_a_view_compiles(tmp_path, backend):
    """The digit CNN flattens with x.view(): after a dequantize, a float conv's output is channels-last."""
    out = tmp_path / backend
    run = qcompile("zoo:digit_cnn", "--passes", "ptq", "--backend", backend, "--calib", "builtin:mnist5k",
                   "--calib-samples", "128", "--skip", "conv_layers_6", "--skip", "fc_layers_0", "--no-verdict",
                   "-o", out)
    assert run.returncode == 0, run.stderr  # the emitted module ran on real digits (its check) without failing
    # torch's DeQuantize keeps the layout, so the float view is rewritten; qcompile's returns standard tensors
    rewritten = "%view = reshape(" in (out / "graph.qir").read_text().replace("  ", "")
    assert rewritten == (backend == "native")
