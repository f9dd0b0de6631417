"""Dynamic int8 for an LSTM on real data: PyTorch, and onnxruntime in both of qcompile's export forms.

    python examples/lstm_fashion_mnist.py [--epochs 2] [--json results.json]

An LSTM reads each Fashion-MNIST image row by row (28 steps of 28 pixels)
and its last hidden state classifies the image. It is trained here, then
quantized with ``dynamic`` (int8 weights, activations quantized at run time)
and compared on the 10,000 test images: size on disk, accuracy, agreement
with float, latency at batch 1 on one thread. The variants:

* float, torch.ao's ``quantize_dynamic``, and qcompile's emitted module;
* qcompile's ONNX export in onnxruntime, ``exact`` (torch's int8 rounding, a
  ``Scan``) and ``fused`` (onnxruntime's ``DynamicQuantizeLSTM`` /
  ``DynamicQuantizeMatMul``, ``qcompile/onnx/fused_dynamic.py``);
* onnxruntime's own ``quantize_dynamic`` (``reduce_range``, its advice for
  AVX2 CPUs) on qcompile's float export.

Needs the Debian package dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qcompile.backends.torch_ao.warnings import torch_deprecations_silenced  # noqa: E402
from qcompile.codegen import load_model, write_model  # noqa: E402
from qcompile.compare import compare, format_table, write_json  # noqa: E402
from qcompile.data import open_data  # noqa: E402
from qcompile.frontend.lower import lower  # noqa: E402
from qcompile.onnx.export import export_onnx  # noqa: E402
from qcompile.onnx.runtime.session import OnnxModel  # noqa: E402
from qcompile.pipeline import run_pipeline  # noqa: E402


class RowLSTM(nn.Module):
    """Reads a [N, 1, 28, 28] image as 28 rows of 28 pixels; the last hidden state gives 10 scores."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.lstm = nn.LSTM(28, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        return self.head(self.lstm(x.flatten(1, 2))[0][:, -1])


def train(model: nn.Module, epochs: int) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for epoch in range(epochs):
        correct = seen = 0
        for x, y in open_data("builtin:fashion-train", batch_size=64).labelled():
            optimizer.zero_grad()
            scores = model(x)
            nn.functional.cross_entropy(scores, y).backward()
            optimizer.step()
            correct += int((scores.argmax(1) == y).sum())
            seen += len(y)
        print(f"epoch {epoch + 1}: train accuracy {correct / seen:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.manual_seed(0)
    model = RowLSTM()
    train(model, args.epochs)
    model.eval()
    test = open_data("builtin:fashion-test", batch_size=500)
    example = (torch.zeros(1, 1, 28, 28),)
    with tempfile.TemporaryDirectory() as tmp_name, torch_deprecations_silenced():
        tmp = Path(tmp_name)
        graph = lower(model, example)
        float_path = export_onnx(graph, tmp / "float.onnx")
        ort_path = tmp / "ort_dynamic.onnx"
        quantize_dynamic(str(float_path), str(ort_path), weight_type=QuantType.QInt8, reduce_range=True)
        run_pipeline(graph, "dynamic")
        write_model(graph, tmp / "qcompile")
        torchao = torch.ao.quantization.quantize_dynamic(model, {nn.LSTM, nn.Linear}, dtype=torch.qint8)
        torch.save(torchao.state_dict(), tmp / "torchao.pt")
        torch.save(model.state_dict(), tmp / "float.pt")
        paths = {form: export_onnx(graph, tmp / f"{form}.onnx", dynamic=form) for form in ("exact", "fused")}
        models = [("float", model, (tmp / "float.pt").stat().st_size),
                  ("torch.ao quantize_dynamic", torchao, (tmp / "torchao.pt").stat().st_size),
                  ("qcompile dynamic", load_model(tmp / "qcompile"), (tmp / "qcompile" / "weights.pt").stat().st_size)]
        models += [(f"qcompile dynamic -> onnxruntime, {form}", OnnxModel(path, 1), path.stat().st_size)
                   for form, path in paths.items()]
        models.append(("onnxruntime quantize_dynamic (reduce_range)", OnnxModel(ort_path, 1), ort_path.stat().st_size))
        rows = compare(models, test, threads=1, repeats=200)
    print(format_table(rows))
    if args.json:
        write_json(rows, args.json, epochs=args.epochs)


if __name__ == "__main__":
    main()
