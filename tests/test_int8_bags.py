"""int8 embedding bags in mean and max mode (``qcompile.nn.int8_bags``), on Fashion-MNIST as bags of pixels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qcompile.codegen import load_model, write_model
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.pipeline import run_pipeline
from tests.models import fashion_rows
from tests.test_quant_dynamic import OffsetBags

LEVELS = 4  # grey levels a pixel's id tells apart


def pixel_ids(images: torch.Tensor) -> torch.Tensor:
    """``[N, 28, 28]`` images in [0, 1] as bags of 784 ids: the pixel's position and its grey level."""
    level = (images.reshape(len(images), -1) * LEVELS).long().clamp(max=LEVELS - 1)
    return torch.arange(784) * LEVELS + level


class PixelBags(nn.Module):
    """A bag of pixel ids -> an EmbeddingBag (mean or max) -> ten class scores."""

    def __init__(self, mode: str):
        super().__init__()
        self.pixels = nn.EmbeddingBag(784 * LEVELS, 32, mode=mode)
        self.classes = nn.Linear(32, 10)

    def forward(self, ids):
        return self.classes(self.pixels(ids))


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_a_trained_bag_classifier_keeps_its_accuracy_with_int8_rows(tmp_path, mode):
    torch.manual_seed(0)
    images, labels = fashion_rows("train", 6000)
    ids = pixel_ids(images)
    model = PixelBags(mode)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        for i in range(0, len(ids), 64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(ids[i:i + 64]), labels[i:i + 64]).backward()
            optimizer.step()
    model.eval()
    test_images, test_labels = fashion_rows("test", 2000)
    test_ids = pixel_ids(test_images)
    graph = lower(model, (test_ids[:1],))
    assert run_pipeline(graph, "dynamic")[0].result.stats == {"embedding_bag": 1, "linear": 1}
    write_model(graph, tmp_path / "int8")
    int8 = load_model(tmp_path / "int8")
    with torch.no_grad():
        want, got = model(test_ids), int8(test_ids)
    float_top1 = float((want.argmax(1) == test_labels).float().mean())
    int8_top1 = float((got.argmax(1) == test_labels).float().mean())
    trained, agreeing = {"mean": (0.7, 0.99), "max": (0.5, 0.94)}[mode]  # measured 0.714 / 0.998, 0.554 / 0.960
    assert float_top1 > trained  # chance is 0.1; one pixel's largest features say less than their mean
    assert abs(int8_top1 - float_top1) < 0.01 and float((got.argmax(1) == want.argmax(1)).float().mean()) > agreeing
    table = (tmp_path / "int8" / "weights.pt").stat().st_size
    assert table < 0.35 * sum(p.numel() * 4 for p in model.parameters())  # uint8 rows, a scale and offset each


@pytest.mark.parametrize("mode", ["mean", "max"])
@pytest.mark.parametrize("include_last_offset", [False, True])
def test_bags_given_offsets_reduce_the_int8_rows_in_their_mode(tmp_path, mode, include_last_offset):
    torch.manual_seed(0)
    model = OffsetBags(mode, include_last_offset, False).eval()
    ends = [20] if include_last_offset else []
    example = (torch.randint(0, 300, (20,)), torch.tensor([0, 3, 3, 9, *ends]), torch.rand(20))
    # another count of ids, an empty first bag and an empty bag inside
    other = (torch.randint(0, 300, (31,)), torch.tensor([0, 0, 7, 7, 30, *([31] if ends else [])]), torch.rand(31))
    graph = lower(model, example)
    run_pipeline(graph, "dynamic")
    table = graph.params[graph.node("items").params["weight"]].dequantize()
    write_model(graph, tmp_path / "int8")
    emitted = load_model(tmp_path / "int8")
    for ids, offsets, weights in (example, other):
        want = nn.functional.embedding_bag(ids, table, offsets, mode=mode, include_last_offset=include_last_offset)
        got = emitted(ids, offsets, weights)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(Interpreter(graph).run(ids, offsets, weights), got, atol=0, rtol=0)
    assert not emitted(*other)[[0, 2]].any()  # empty bags are zeros, as in float torch


class PaddedBags(nn.Module):
    """A bag that leaves a padding id out, given ``[bags, ids]`` ids (a padded batch) or 1-D ids and offsets."""

    def __init__(self, mode: str, by_offsets: bool):
        super().__init__()
        self.items = nn.EmbeddingBag(300, 8, mode=mode, padding_idx=0)
        self.by_offsets = by_offsets
        with torch.no_grad():
            self.items.weight[0] = 5.0  # a padding row that is not zero: only leaving it out gives torch's answer

    def forward(self, ids, offsets):
        return self.items(ids, offsets) if self.by_offsets else self.items(ids)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_bags_leave_their_padding_id_out(tmp_path, mode):
    from qcompile.onnx.export import export_onnx
    from qcompile.onnx.runtime.check import check_onnx

    torch.manual_seed(0)
    padded = (torch.tensor([[0, 5, 7, 0], [0, 0, 0, 0], [9, 8, 0, 4]]), torch.tensor([0]))
    offset = (torch.tensor([3, 0, 0, 7, 0, 2, 2]), torch.tensor([0, 2, 3, 5]))  # bags [3, 0], [0], [7, 0], [2, 2]
    others = {2: torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [0, 6, 0, 0], [5, 4, 3, 2], [0, 0, 0, 9]]),
              1: torch.tensor([0, 0, 0, 8, 1, 0, 0, 0, 4])}  # another number of bags, and of ids
    for example in (padded, offset):
        ids, offsets = example
        model = PaddedBags(mode, by_offsets=ids.dim() == 1).eval()
        other = (others[ids.dim()], torch.tensor([0, 1, 3, 6]))  # bags [0], [0, 0], [8, 1, 0], [0, 0, 4]
        for passes in ("fuse", "dynamic"):
            graph = lower(model, example)
            run_pipeline(graph, passes)
            node = graph.node("items")
            table = graph.param(node, "weight")
            if passes == "dynamic":  # torch.ao's int8 bag reads every id
                assert node.target == "qcompile.nn.int8_bags.Int8EmbeddingBag"
                table = table.dequantize()
            out = tmp_path / f"{passes}_{ids.dim()}"
            write_model(graph, out)
            emitted = load_model(out)
            for x, o in (example, other):
                want = nn.functional.embedding_bag(x, table, None if x.dim() == 2 else o, mode=mode, padding_idx=0)
                torch.testing.assert_close(emitted(x, o), want, atol=1e-5, rtol=0)
                assert not emitted(x, o)[1].any()  # a bag of padding alone is 0
            torch.testing.assert_close(torch.jit.script(emitted)(*other), emitted(*other), atol=0, rtol=0)
            with torch.no_grad():
                torch.testing.assert_close(emitted(*other), model(*other), atol=0.05, rtol=0)  # the float bag
            path = export_onnx(graph, out / "model.onnx")
            assert all(r.max_error < 1e-5 for r in check_onnx(path, emitted, [other], None, graph=graph))
