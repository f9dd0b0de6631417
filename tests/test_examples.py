"""Examples that run end to end on real data (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run_example(script: str, tmp_path: Path) -> tuple[str, dict]:
    """Run ``examples/<script>`` for one epoch; its stdout and its table's rows by name."""
    out = tmp_path / "results.json"
    run = subprocess.run([sys.executable, str(REPO / "examples" / script), "--epochs", "1", "--json", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    return run.stdout, {r["name"]: r for r in json.loads(out.read_text())["rows"]}


def _assert_int8_rows_keep_accuracy(rows: dict) -> None:
    """Every row within 0.015 of float's top-1; every quantized one agreeing on 98% and under half its size."""
    for name, row in rows.items():
        assert row["top1"] >= rows["float"]["top1"] - 0.015, name
        if name != "float":
            assert row["agreement"] >= 0.98 and row["size_mb"] < rows["float"]["size_mb"] / 2, name


@pytest.mark.slow
def test_transformer_example_on_fashion_mnist(tmp_path):
    stdout, rows = _run_example("transformer_fashion_mnist.py", tmp_path)
    assert "lowered through torch.export" in stdout
    assert list(rows) == ["float", "static int8", "static int8 -> onnxruntime", "dynamic int8",
                          "dynamic int8 -> onnxruntime"]
    assert rows["float"]["top1"] >= 0.80  # one epoch on the 60,000 training images
    _assert_int8_rows_keep_accuracy(rows)


@pytest.mark.slow
def test_lstm_example_on_fashion_mnist(tmp_path):
    _, rows = _run_example("lstm_fashion_mnist.py", tmp_path)
    assert list(rows) == ["float", "torch.ao quantize_dynamic", "qcompile dynamic",
                          "qcompile dynamic -> onnxruntime, exact", "qcompile dynamic -> onnxruntime, fused",
                          "onnxruntime quantize_dynamic (reduce_range)"]
    assert rows["float"]["top1"] >= 0.70  # one epoch on the 60,000 training images
    # torch.ao's int8 model and qcompile's are the same model; the exact export rounds as they do (within
    # float rounding: at most a near-tie or two of the 10,000 images may flip)
    assert abs(rows["qcompile dynamic"]["top1"] - rows["torch.ao quantize_dynamic"]["top1"]) <= 2e-4
    assert abs(rows["qcompile dynamic -> onnxruntime, exact"]["top1"] - rows["qcompile dynamic"]["top1"]) <= 2e-4
    _assert_int8_rows_keep_accuracy(rows)
