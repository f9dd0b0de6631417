"""Model inputs: factory + weights, TorchScript, export archives, pickles, zoo; and their errors."""

from __future__ import annotations

import pytest
import torch

from qcompile.errors import QCompileError
from qcompile.frontend.loaders import detect_form, load_model
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from tests.models import ConvBnRelu, randomize_batch_norm


@pytest.fixture
def model():
    return randomize_batch_norm(ConvBnRelu())


def test_factory_with_weights(tmp_path, model):
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model("tests.models:ConvBnRelu", weights=str(path))
    x = torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(loaded.module(x), model(x))
    assert not loaded.notes


def test_factory_without_weights_is_the_same_random_model_on_every_load():
    state = torch.random.get_rng_state()
    first, second = (load_model("tests.models:ConvBnRelu") for _ in range(2))
    for a, b in zip(first.module.state_dict().values(), second.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is untouched
    assert "has no --weights" in first.notes[0] and "seed 0" in first.notes[0]


def test_a_factory_that_loads_its_own_weights_gets_no_random_weights_note():
    loaded = load_model("qcompile.zoo:_digit_cnn")  # the real digit CNN: its factory loads trained weights
    assert not [note for note in loaded.notes if "random initialization" in note]
    assert load_model("tests.models:ConvBnRelu").notes  # a random one still gets it


def test_factory_with_wrong_weights(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"other.weight": torch.zeros(1)}, path)
    with pytest.raises(QCompileError, match="do not fit"):
        load_model("tests.models:ConvBnRelu", weights=str(path))


@pytest.mark.parametrize("spec, message", [
    ("no_such_pkg.mod:f", "cannot import"),
    ("tests.models:Nope", "has no attribute"),
    ("missing.pt", "neither an existing file"),
])
def test_bad_specs(spec, message):
    with pytest.raises(QCompileError, match=message):
        load_model(spec)


def test_export_archive(tmp_path, model):
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 6, 6),)), str(path))
    assert detect_form(path) == "export"
    loaded = load_model(str(path))
    assert loaded.form == "export" and loaded.example_inputs[0].shape == (1, 3, 6, 6)
    g = lower(loaded.module, loaded.example_inputs)
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(Interpreter(g).run(x), model(x))


def test_torchscript(tmp_path, model):
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    assert detect_form(path) == "torchscript"
    with pytest.raises(QCompileError, match="TorchScript.*does not load it by default") as info:
        load_model(str(path), example_inputs=(torch.randn(1, 3, 6, 6),))
    assert "--trust-pickle" in info.value.hint
    with pytest.raises(QCompileError, match="needs example inputs"):
        load_model(str(path), trust_pickle=True)
    loaded = load_model(str(path), trust_pickle=True, example_inputs=(torch.randn(1, 3, 6, 6),))
    g = lower(loaded.module, loaded.example_inputs)
    assert g.find(op="conv2d")[0].params["weight"] == "conv.weight"
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(Interpreter(g).run(x), model(x))


def test_pickled_module_needs_trust(tmp_path, model):
    path = tmp_path / "full.pt"
    torch.save(model, path)
    with pytest.raises(QCompileError, match="--trust-pickle"):
        load_model(str(path))
    loaded = load_model(str(path), trust_pickle=True)
    assert loaded.form == "pickle"


def test_state_dict_as_model_explains(tmp_path, model):
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(QCompileError, match="state dict .*not a model") as info:
        load_model(str(path))
    assert "--weights" in info.value.hint


@pytest.mark.parametrize("content", [b"", b"not a model at all", b"PK\x03\x04garbage"])
def test_corrupt_files(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(QCompileError):
        load_model(str(path))


def test_zoo_models_load_real_weights():
    digits = load_model("zoo:digit_cnn")
    assert digits.example_inputs[0].shape == (1, 1, 28, 28)
    first = digits.module.conv_layers[0].weight
    assert first.abs().sum() > 0 and first.std() > 0.01  # trained, not freshly initialised zeros
    with pytest.raises(QCompileError, match="choose one of"):
        load_model("zoo:nope")
