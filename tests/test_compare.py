"""``compare``'s accuracy and agreement read the class axis of the output, wherever it is."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qcompile.codegen import load_model, write_model
from qcompile.compare import compare, format_table
from qcompile.data.sources import DataSource
from qcompile.diagnose.metrics import agreement, class_dim
from qcompile.errors import QCompileError
from qcompile.frontend.lower import lower
from qcompile.pipeline import run_pipeline
from tests.models import RowLSTM, fashion_rows, fit_on_fashion_rows
from tests.test_cli import qcompile


class RowTagger(RowLSTM):
    """Tags every row of an image with the image's class: ``[N, 28, 10]`` scores (the CLI builds it by name)."""

    def __init__(self):
        super().__init__(48, tag_rows=True)


@pytest.fixture(scope="module")
def tagger():
    """A RowTagger trained for one epoch on 6,000 Fashion-MNIST images; 512 test images, a tag per row."""
    torch.manual_seed(0)
    model = fit_on_fashion_rows(RowTagger(), 6000, epochs=1)
    x, labels = fashion_rows("test", 512)
    return model, x, labels[:, None].expand(-1, 28).clone()


def _dynamic_int8(model, example, out_dir):
    graph = lower(model, (example,))
    run_pipeline(graph, "dynamic")
    write_model(graph, out_dir)
    return load_model(out_dir)


def _source(x, labels=None) -> DataSource:
    return DataSource("fashion rows", list(range(len(x))), labels, lambda i: x[i], batch_size=128)


def _run(model, x) -> torch.Tensor:
    """Outputs in the batches of 128 that compare runs (a dynamic model's scales follow its batch)."""
    with torch.no_grad():
        return torch.cat([model(x[i:i + 128]) for i in range(0, len(x), 128)])


def test_a_taggers_accuracy_and_agreement_are_over_its_last_axis(tagger, tmp_path):
    model, x, labels = tagger
    int8 = _dynamic_int8(model, x[:1], tmp_path / "int8")
    rows = compare([("float", model, 1), ("int8", int8, 1)], _source(x, labels), repeats=2)
    want, got = _run(model, x), _run(int8, x)
    float_top1 = float((want.argmax(-1) == labels).float().mean())
    assert rows[0].top1 == pytest.approx(float_top1) and float_top1 > 0.45  # trained (chance 0.1; early rows guess)
    assert rows[1].top1 == pytest.approx(float((got.argmax(-1) == labels).float().mean()))
    top5 = float((want.topk(5, -1).indices == labels[..., None]).any(-1).float().mean())
    assert rows[0].top5 == pytest.approx(top5) and top5 > rows[0].top1
    assert rows[1].agreement == pytest.approx(float((got.argmax(-1) == want.argmax(-1)).float().mean()))
    assert rows[1].agreement > 0.95
    wrong_axis = float((got.argmax(1) == want.argmax(1)).float().mean())  # which row scores highest: not a tag
    assert rows[1].agreement != pytest.approx(wrong_axis)


def test_without_labels_agreement_waits_for_the_class_axis(tagger, tmp_path):
    model, x, _ = tagger
    int8 = _dynamic_int8(model, x[:1], tmp_path / "int8")
    rows = compare([("float", model, 1), ("int8", int8, 1)], _source(x), repeats=2)
    assert rows[1].agreement is None and rows[1].sqnr_db > 25
    assert "give its class axis with --class-dim" in format_table(rows)
    given = compare([("float", model, 1), ("int8", int8, 1)], _source(x), repeats=2, class_dim=-1)
    assert given[1].agreement == pytest.approx(agreement(_run(int8, x), _run(model, x), 2))
    assert given[1].agreement > 0.95
    assert "--class-dim" not in format_table(given)


def test_class_axis_from_labels_and_requests():
    scores = torch.zeros(2, 5, 7, 9)  # segmentation: [N, C, H, W] against [N, H, W] labels
    assert class_dim(scores, torch.zeros(2, 7, 9)) == 1
    assert class_dim(torch.zeros(2, 6, 6), torch.zeros(2, 6)) == 1  # both axes fit: torch's [N, C, T] wins
    assert class_dim(torch.zeros(2, 6)) == 1 and class_dim(scores) is None and class_dim(torch.zeros(2, 1)) is None
    assert class_dim(scores, requested=-3) == 1
    with pytest.raises(QCompileError, match=r"labels of shape \(2, 5\) fit no axis of the model's output"):
        class_dim(scores, torch.zeros(2, 5))
    for bad in (0, 4, -4):
        with pytest.raises(QCompileError, match=f"class dimension {bad} is not a class axis"):
            class_dim(scores, requested=bad)


def test_class_dim_from_the_command_line(tagger, tmp_path):
    model, x, _ = tagger
    weights = tmp_path / "tagger.pt"
    torch.save(model.state_dict(), weights)
    data = tmp_path / "rows.npz"
    np.savez(data, x=x[:256].numpy())
    spec = ("tests.test_compare:RowTagger", "--weights", weights)
    out = tmp_path / "dynamic"
    run = qcompile(*spec, "--input-shape", "1,28,28", "--passes", "dynamic", "-o", out)
    assert run.returncode == 0, run.stderr
    run = qcompile("compare", *spec, out, "--data", data, "--repeats", "2")
    assert run.returncode == 0, run.stderr
    assert "give its class axis with --class-dim" in run.stdout
    table = tmp_path / "table.json"
    run = qcompile("compare", *spec, out, "--data", data, "--repeats", "2", "--class-dim", "2", "--json", table)
    assert run.returncode == 0, run.stderr
    written = json.loads(table.read_text())
    assert written["context"]["class_dim"] == 2 and written["rows"][1]["agreement"] > 0.95
    run = qcompile("compare", *spec, out, "--data", data, "--repeats", "2", "--class-dim", "0")
    assert run.returncode == 2 and "class dimension 0 is not a class axis" in run.stderr
