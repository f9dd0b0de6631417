"""Data sources: image folders, tensor files, callables, built-in sets, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.io import write_png

from qcompile.data import open_data
from qcompile.data.preprocess import imagenet
from qcompile.errors import QCompileError


def _png(path, value, size=(40, 50)):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(torch.full((3, *size), value, dtype=torch.uint8), str(path))


def test_image_folder_with_class_subfolders(tmp_path):
    for cls, value in (("cat", 10), ("dog", 200)):
        for i in range(3):
            _png(tmp_path / cls / f"{i}.png", value)
    data = open_data(str(tmp_path), batch_size=4)
    assert data.num_samples == 6 and len(data) == 2
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    x, y = next(data.labelled())
    assert x.shape == (4, 3, 224, 224) and y.tolist() == [0, 0, 0, 1]


def test_flat_image_folder_is_unlabelled(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", 50 * i)
    data = open_data(str(tmp_path), preprocess="unit", batch_size=8)
    assert data.labels is None
    (x,) = next(iter(data))
    assert x.shape == (3, 3, 40, 50) and float(x[2].max()) == pytest.approx(100 / 255)


def test_npz_and_pt_files(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((10, 2), np.float32), y=np.arange(10))
    data = open_data(str(tmp_path / "d.npz"), batch_size=4, limit=6)
    assert data.num_samples == 6 and data.labels.tolist() == list(range(6))
    torch.save((torch.zeros(5, 3), torch.arange(5)), tmp_path / "d.pt")
    assert open_data(str(tmp_path / "d.pt")).labels.tolist() == list(range(5))
    torch.save({"inputs": torch.zeros(5, 3)}, tmp_path / "e.pt")
    assert open_data(str(tmp_path / "e.pt")).labels is None


def ready_batches():
    return [(torch.zeros(2, 3),), (torch.ones(2, 3),)]


def test_callable_returning_batches():
    data = open_data("tests.test_data:ready_batches")
    assert [b[0].sum().item() for b in data] == [0.0, 6.0] and len(data) == 2


def test_builtin_sets_are_real_and_shuffled():
    photos = open_data("builtin:photos", batch_size=8)
    assert photos.num_samples == 104  # 13 photos x 8 crops
    (x,) = next(iter(photos))
    assert x.shape == (8, 3, 224, 224) and x.std() > 0.5
    digits = open_data("builtin:mnist5k", limit=200)
    assert len(set(digits.labels.tolist())) == 10  # not 200 zeros: the stored order is sorted
    fashion = open_data("builtin:fashion-test", limit=64)
    x, y = next(fashion.labelled())
    assert x.shape == (32, 1, 28, 28) and x.min() == -1 and x.max() == 1


def test_imagenet_preprocessing_resizes_and_normalises():
    image = torch.full((3, 300, 500), 124, dtype=torch.uint8)
    out = imagenet(image)
    assert out.shape == (3, 224, 224)
    assert abs(float(out[0].mean()) - (124 / 255 - 0.485) / 0.229) < 1e-3


@pytest.mark.parametrize("spec, message", [
    ("builtin:imagenet", "no built-in data set"),
    ("nowhere/", "is not an image folder"),
    ("x.npz", "does not exist"),
])
def test_bad_sources(spec, message):
    with pytest.raises(QCompileError, match=message):
        open_data(spec)


def test_mixed_image_sizes_need_a_resizing_preset(tmp_path):
    _png(tmp_path / "a.png", 1, (10, 10))
    _png(tmp_path / "b.png", 1, (20, 10))
    with pytest.raises(QCompileError, match="different shapes"):
        next(iter(open_data(str(tmp_path), preprocess="unit")))
