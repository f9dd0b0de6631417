"""The qcompile command, run as a user runs it (a subprocess of the console script)."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_PASS = REPO / "examples" / "custom_pass.py"


def qcompile(*args, cwd=None, env=None):
    exe = shutil.which("qcompile")
    assert exe, "the qcompile console script is not installed (pip install -e .)"
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_main_job_on_a_real_model(tmp_path):
    out = tmp_path / "out"
    run = qcompile("zoo:digit_cnn", "--passes", "fuse", "-o", out, "--timing")
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["graph.qir", "model.py", "qcompile-signature.json",
                                                     "verdict.json", "weights.pt"]
    assert "fuse: changed (conv2d+relu: 3, linear+relu: 1)" in run.stderr
    assert "emitted module matches the graph within 0" in run.stderr
    assert "total" in run.stderr  # the timing table


def test_python_dash_m_works(tmp_path):
    run = subprocess.run([sys.executable, "-m", "qcompile", "zoo"], capture_output=True, text=True)
    assert run.returncode == 0 and "zoo:mobilenet_v2" in run.stdout


def test_version_and_a_closed_pipe():
    run = qcompile("--version")
    assert run.returncode == 0 and re.fullmatch(r"qcompile \d+\.\d+\.\d+\n", run.stdout)
    exe = shutil.which("qcompile")
    reader = subprocess.Popen([exe, "passes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.close()  # as `qcompile passes | head -0` would
    assert reader.wait(timeout=120) == 0
    assert reader.stderr.read() == b""  # no BrokenPipeError traceback


def test_passes_lists_docs():
    run = qcompile("passes")
    assert run.returncode == 0
    assert re.search(r"\n  fuse +Fold BatchNorm into conv/linear weights", run.stdout)
    assert "batch-norm: bool = true" in run.stdout
    detail = qcompile("passes", "fuse")
    assert "requires: lowered; provides: fused" in detail.stdout and "Before and after" in detail.stdout


def test_custom_pass_plugin_listed_and_dumped(tmp_path):
    listed = qcompile("passes", "--plugin", EXAMPLE_PASS)
    assert "strip-identities" in listed.stdout
    dump = tmp_path / "dump"
    run = qcompile("inspect", "zoo:mobilenet_v2", "--plugin", EXAMPLE_PASS,
                   "--passes", "fuse,strip-identities", "--dump-dir", dump,
                   "--print-after", "strip-identities")
    assert run.returncode == 0, run.stderr
    assert "strip-identities: changed (removed: 1)" in run.stderr
    names = sorted(p.name for p in dump.iterdir())
    assert names == ["00_input.dot", "00_input.qir", "01_fuse.dot", "01_fuse.qir",
                     "02_strip-identities.dot", "02_strip-identities.qir"]
    assert "dropout" in (dump / "01_fuse.qir").read_text()
    assert "dropout" not in (dump / "02_strip-identities.qir").read_text()
    assert "// after strip-identities" in run.stdout


@pytest.mark.parametrize("fmt, start", [("qir", "graph CNN"), ("dot", 'digraph "CNN"'), ("svg", "<svg")])
def test_inspect_formats(tmp_path, fmt, start):
    target = tmp_path / f"g.{fmt}"
    run = qcompile("inspect", "zoo:digit_cnn", "--format", fmt, "-o", target)
    assert run.returncode == 0, run.stderr
    assert target.read_text().startswith(start)


@pytest.mark.parametrize("args, message", [
    (["zoo:digit_cnn", "--passes", "fsue"], "did you mean 'fuse'?"),
    (["zoo:digit_cnn", "--passes", "fuse{bits=4}"], "unknown option 'bits' for pass 'fuse'"),
    (["zoo:nothing"], "no bundled model named 'nothing'"),
    (["torchvision.models:resnet18"], "pass --input-shape"),
    (["torchvision.models:resnet18", "--input-shape", "1,3,x"], "not a list of integers"),
    (["zoo:digit_cnn", "--print-after", "calibrate"], "no such pass in the pipeline"),
    (["zoo:digit_cnn", "--plugin", "nowhere.py"], "plugin file nowhere.py does not exist"),
    (["zoo:digit_cnn", "--input-shape", "1,3,28"], "failed at conv_layers.5: RuntimeError: Given input size"),
])
def test_user_mistakes_exit_2_without_output_or_traceback(tmp_path, args, message):
    out = tmp_path / "out"
    passes = [] if "--passes" in args else ["--passes", "fuse"]  # without --passes, the data would be missing first
    run = qcompile(*args, *passes, "-o", out)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr
    assert "Traceback" not in run.stderr and "traceback" not in run.stderr  # nor torch.fx's "Original traceback"
    assert not out.exists()


def test_untraceable_model_reports_module_and_line(tmp_path):
    (tmp_path / "usermodel.py").write_text(
        "import torch\n\n"
        "class Inner(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        if x.mean() > 0:\n"
        "            return x\n"
        "        return -x\n\n"
        "class Outer(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.gate = Inner()\n\n"
        "    def forward(self, x):\n"
        "        return self.gate(x) * 2\n"
    )
    run = qcompile("usermodel:Outer", "--input-shape", "2,3", "--passes", "fuse", "-o", tmp_path / "out",
                   env={"PYTHONPATH": str(tmp_path)})
    assert run.returncode == 2
    assert "in module 'gate' at" in run.stderr and "usermodel.py:5" in run.stderr
    assert "if x.mean() > 0:" in run.stderr
    assert "torch.export" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.slow
def test_a_detector_backbone_with_dict_outputs_compiles_and_exports(tmp_path):
    run = qcompile("tests.models:detector_backbone", "--input-shape", "1,3,224,224", "--passes", "ptq",
                   "--calib", "builtin:photos", "--calib-samples", "16", "--export", "onnx", "--check",
                   "--check-samples", "8", "-o", tmp_path / "out", cwd=Path(__file__).resolve().parent.parent)
    assert run.returncode == 0, run.stderr  # --check: onnxruntime's codes within 1 LSB on every feature map
    assert "emitted module matches the graph within 0" in run.stderr  # every feature map compared
    outputs = [o.name for o in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.output]
    assert outputs == ["0", "1", "2", "3", "4", "5"]  # the feature maps, by their keys
    from qcompile.codegen import load_model
    from qcompile.data import open_data
    from tests.models import detector_backbone

    x = list(open_data("builtin:photos", batch_size=8, limit=24))[2][0]  # 8 photos the calibration did not see
    with torch.no_grad():
        want, got = detector_backbone()(x), load_model(tmp_path / "out")(x)
    error = sum(float((got[k] - want[k]).pow(2).sum()) for k in want)
    signal = sum(float(want[k].pow(2).sum()) for k in want)
    assert 10 * math.log10(signal / error) > 25  # int8 near float on all six maps (32.6 dB measured)
