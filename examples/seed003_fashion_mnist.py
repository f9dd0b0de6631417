"""Seed 003, end to end: train the Fashion-MNIST network, then quantize it three ways.

    python examples/seed003_fashion_mnist.py [--epochs 2] [--json results.json]

The seed's author edits the model by hand for each workflow (QuantStub,
DeQuantStub, fusing, qconfigs). Here the model stays as written; qcompile
does the rest from the graph. Prints the seed's comparison table: size on
disk, test accuracy on the 10,000 Fashion-MNIST test images, latency.
Needs the Debian package dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qcompile.codegen import load_model, write_model  # noqa: E402
from qcompile.compare import compare, format_table, write_json  # noqa: E402
from qcompile.data import open_data  # noqa: E402
from qcompile.frontend.lower import lower  # noqa: E402
from qcompile.pipeline import PassContext, run_pipeline  # noqa: E402
from qcompile.training import fit  # noqa: E402
from tests.seed_models import FashionNet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--qat-samples", type=int, default=12800, help="training samples for the QAT epoch")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    train = open_data("builtin:fashion-train", batch_size=64)
    test = open_data("builtin:fashion-test", batch_size=500)

    graph = lower(FashionNet(), (torch.randn(1, 1, 28, 28),))
    fit(graph, train, epochs=args.epochs, lr=0.01, log=print)
    calibration = open_data("builtin:fashion-train", limit=1024, batch_size=64)
    variants = {
        "float": (graph.copy(), None, PassContext()),
        "static int8": (graph.copy(), "ptq", PassContext(calib_data=calibration)),
        "dynamic int8": (graph.copy(), "dynamic-int8", PassContext()),
        "QAT int8": (graph.copy(), "qat-int8", PassContext(train_data=open_data(
            "builtin:fashion-train", limit=args.qat_samples, batch_size=64))),
    }
    models = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (g, pipeline, ctx) in variants.items():
            if pipeline:
                run_pipeline(g, pipeline, ctx)
            out = Path(tmp) / name.replace(" ", "_")
            write_model(g, out)
            models.append((name, load_model(out), (out / "weights.pt").stat().st_size))
        rows = compare(models, test, threads=1, repeats=50)
    print(format_table(rows))
    if args.json:
        write_json(rows, args.json, epochs=args.epochs, qat_samples=args.qat_samples)


if __name__ == "__main__":
    main()
