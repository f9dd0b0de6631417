"""Preprocessing presets: from a decoded image (uint8, C x H x W) to a model input.

* ``imagenet``: RGB, shorter side to 256, centre crop 224, ImageNet mean/std.
* ``mnist``: grey, 28 x 28, MNIST mean/std (0.1307, 0.3081).
* ``grey-half``: grey, 28 x 28, (x - 0.5) / 0.5 (the Fashion-MNIST tutorials' choice).
* ``unit``: values / 255, nothing else.
* ``none``: the tensor as stored (for ``.npz`` / ``.pt`` data already prepared).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qcompile.errors import QCompileError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.shape[0] == 4:
        image = image[:3]
    if channels == 3 and image.shape[0] == 1:
        return image.expand(3, -1, -1)
    if channels == 1 and image.shape[0] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        return (image.float() * weights).sum(0, keepdim=True)
    return image


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(image.float().unsqueeze(0), size=size, mode="bilinear", antialias=True,
                         align_corners=False).squeeze(0)


def _normalize(image: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.tensor(mean).view(-1, 1, 1)
    std = torch.tensor(std).view(-1, 1, 1)
    return (image / 255.0 - mean) / std


def imagenet(image: torch.Tensor) -> torch.Tensor:
    image = _channels(image, 3)
    h, w = image.shape[-2:]
    scale = 256 / min(h, w)
    image = _resize(image, (max(256, round(h * scale)), max(256, round(w * scale))))
    h, w = image.shape[-2:]
    top, left = (h - 224) // 2, (w - 224) // 2
    image = image[:, top:top + 224, left:left + 224]
    return _normalize(image, IMAGENET_MEAN, IMAGENET_STD)


def _grey28(image: torch.Tensor) -> torch.Tensor:
    image = _channels(image, 1).float()
    return image if image.shape[-2:] == (28, 28) else _resize(image, (28, 28))


PRESETS = {
    "imagenet": imagenet,
    "mnist": lambda image: _normalize(_grey28(image), (0.1307,), (0.3081,)),
    "grey-half": lambda image: _normalize(_grey28(image), (0.5,), (0.5,)),
    "unit": lambda image: image.float() / 255.0,
    "none": lambda image: image,
}


def get_preprocess(name: str):
    """The preset function called ``name``."""
    if name not in PRESETS:
        raise QCompileError(f"unknown preprocessing {name!r}", hint=f"presets: {', '.join(PRESETS)}")
    return PRESETS[name]
