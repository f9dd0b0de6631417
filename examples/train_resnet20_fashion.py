"""Train the ResNet-20 of zoo:resnet20_fashion on Fashion-MNIST and write its weights.

    python examples/train_resnet20_fashion.py [--epochs 3] [--out qcompile/weights/resnet20_fashion.pt]

SGD with momentum 0.9, lr 0.05 then 0.005 for the last epoch, batch 128,
seed 0, inputs scaled to [-1, 1] (the grey-half preprocessing). Prints the
test accuracy on the 10,000 test images after each epoch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qcompile.data import open_data  # noqa: E402
from qcompile.fileio import atomic_torch_save  # noqa: E402
from qcompile.resnet20 import ResNet20  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "qcompile" / "weights"
                                             / "resnet20_fashion.pt"))
    args = parser.parse_args()
    torch.manual_seed(0)
    train = open_data("builtin:fashion-train", batch_size=128)
    test = open_data("builtin:fashion-test", batch_size=1000)
    model = ResNet20()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    for epoch in range(args.epochs):
        if epoch == args.epochs - 1:
            for group in optimizer.param_groups:
                group["lr"] = 0.005
        model.train()
        start = time.perf_counter()
        order = torch.randperm(len(train.items))
        shuffled = train.__class__(train.name, train.items[order], train.labels[order], train.load, 128)
        for x, y in shuffled.labelled():
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in test.labelled())
        print(f"epoch {epoch + 1}: test accuracy {correct / 10000:.4f} ({time.perf_counter() - start:.0f} s)",
              flush=True)
    atomic_torch_save(args.out, model.state_dict())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
