"""A small vision transformer trained on Fashion-MNIST, quantized static and dynamic, also through onnxruntime.

    python examples/transformer_fashion_mnist.py [--epochs 3] [--json results.json]

The model cuts each 28x28 image into 16 patches of 7x7, embeds them and runs
``nn.TransformerEncoder`` (2 layers, width 64, 4 heads) over them. torch.fx
cannot look inside ``nn.TransformerEncoder``, so qcompile lowers the model
through torch.export (it prints a note saying so) and quantizes the linears
inside the encoder: static int8 (``ptq``, calibrated on 1,024 training
images) and dynamic int8. Each int8 model also runs as its ONNX export in
onnxruntime. Prints size on disk, accuracy on the 10,000 test images,
agreement with float and latency. Needs the Debian package
dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qcompile.codegen import load_model, write_model  # noqa: E402
from qcompile.compare import compare, format_table, write_json  # noqa: E402
from qcompile.data import open_data  # noqa: E402
from qcompile.frontend.lower import lower  # noqa: E402
from qcompile.onnx.export import export_onnx  # noqa: E402
from qcompile.onnx.runtime.session import OnnxModel  # noqa: E402
from qcompile.pipeline import PassContext, run_pipeline  # noqa: E402


class PatchTransformer(nn.Module):
    def __init__(self, patch: int = 7, width: int = 64, heads: int = 4, layers: int = 2, classes: int = 10):
        super().__init__()
        self.patch = patch
        tokens = (28 // patch) ** 2
        self.embed = nn.Linear(patch * patch, width)
        self.position = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        p = self.patch
        n = x.shape[0]
        patches = x.reshape(n, 28 // p, p, 28 // p, p).permute(0, 1, 3, 2, 4).reshape(n, -1, p * p)
        return self.head(self.encoder(self.embed(patches) + self.position).mean(1))


def train(model: nn.Module, epochs: int) -> None:
    data = open_data("builtin:fashion-train", batch_size=128)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=epochs * len(data))
    model.train()
    for epoch in range(epochs):
        total, count = 0.0, 0
        for x, y in data.labelled():
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total, count = total + loss.item() * len(y), count + len(y)
        print(f"epoch {epoch + 1}: loss {total / count:.4f}", flush=True)
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = PatchTransformer()
    train(model, args.epochs)
    test = open_data("builtin:fashion-test", batch_size=500)
    calibration = open_data("builtin:fashion-train", limit=1024, batch_size=64)
    example = (torch.randn(1, 1, 28, 28),)
    notes: list[str] = []
    float_graph = lower(model, example, notes)
    for note in notes:
        print(f"note: {note}")
    variants = {
        "float": (None, PassContext()),
        "static int8": ("ptq", PassContext(calib_data=calibration)),
        "dynamic int8": ("dynamic-int8", PassContext()),
    }
    models = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (pipeline, ctx) in variants.items():
            graph = float_graph.copy()
            if pipeline:
                run_pipeline(graph, pipeline, ctx)
            out = Path(tmp) / name.replace(" ", "_")
            write_model(graph, out)
            models.append((name, load_model(out), (out / "weights.pt").stat().st_size))
            if pipeline:
                path = export_onnx(graph, out / "model.onnx")
                models.append((f"{name} -> onnxruntime", OnnxModel(path, threads=1), path.stat().st_size))
        rows = compare(models, test, threads=1, repeats=50)
    print(format_table(rows))
    if args.json:
        write_json(rows, args.json, epochs=args.epochs)


if __name__ == "__main__":
    main()
