"""Latency and fidelity of int8 LSTMs: qcompile's dynamic export vs torch.ao and onnxruntime's quantize_dynamic.

    python benchmarks/recurrent_latency.py [--layers 2] [--seq 35] [--batch 1] [--threads 1 2]
                                           [--repeats 20] [--pairs 60] [--json out.json]

The model is a word-level language model without its embedding table: an
``nn.LSTM`` (input 512, hidden 256, ``--layers`` layers) over a sequence of
random word vectors, and a linear head to 1000 words; weights are torch's
default random initialization. Variants, timed in interleaved rounds in one
process (see ``benchmarks/int8_latency.py``): float torch, torch.ao
``quantize_dynamic`` on ``nn.LSTM`` and ``nn.Linear``, qcompile ``dynamic`` as
the emitted PyTorch module and exported to onnxruntime (the LSTM as a
``Scan`` that rounds as torch's int8 kernels do, and in the ``fused`` form as
onnxruntime's ``DynamicQuantizeLSTM``), onnxruntime float, and
onnxruntime's ``quantize_dynamic`` on the same float ONNX file (its
``DynamicQuantizeLSTM``), with its defaults and with ``reduce_range``.
Fidelity is the SQNR (dB) of each variant's logits against float torch on
held-out sequences; the head-to-head table is read as in
``benchmarks/transformer_latency.py``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.int8_latency import quiet  # noqa: E402
from benchmarks.transformer_latency import OURS, emit, measure, parse_arguments, print_tables  # noqa: E402
from qcompile.frontend.lower import lower  # noqa: E402
from qcompile.onnx.export import export_onnx  # noqa: E402
from qcompile.onnx.runtime.session import OnnxModel  # noqa: E402
from qcompile.pipeline import run_pipeline  # noqa: E402


class WordLSTM(nn.Module):
    def __init__(self, layers: int, width: int = 512, hidden: int = 256, words: int = 1000):
        super().__init__()
        self.rnn = nn.LSTM(width, hidden, num_layers=layers)
        self.head = nn.Linear(hidden, words)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def main() -> None:
    args = parse_arguments(__doc__, layers=2, seq=35)
    quiet()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.manual_seed(0)
    model = WordLSTM(args.layers).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.seq, args.batch, 512, generator=g)
    held_out = torch.randn(args.seq, 16, 512, generator=g)
    rows, duels = [], []
    with tempfile.TemporaryDirectory() as tmp_name, torch.no_grad():
        tmp = Path(tmp_name)
        float_path = export_onnx(lower(model, (x,), dynamic_axes=(1,)), tmp / "float.onnx")
        quantize_dynamic(str(float_path), str(tmp / "ort_dynamic.onnx"), weight_type=QuantType.QInt8)
        quantize_dynamic(str(float_path), str(tmp / "ort_dynamic_rr.onnx"), weight_type=QuantType.QInt8,
                         reduce_range=True)
        dynamic = lower(model, (x,), dynamic_axes=(1,))
        run_pipeline(dynamic, "dynamic")
        dynamic_module = emit(dynamic, tmp / "dynamic")
        dynamic_path = export_onnx(dynamic, tmp / "dynamic.onnx")
        fused_path = export_onnx(dynamic, tmp / "dynamic_fused.onnx", dynamic="fused")
        torchao = torch.ao.quantization.quantize_dynamic(model, {nn.LSTM, nn.Linear}, dtype=torch.qint8)
        reference = model(held_out)
        for threads in args.threads:
            torch.set_num_threads(threads)
            variants = {"float torch": model, "torch.ao quantize_dynamic": torchao,
                        "qcompile dynamic (native)": dynamic_module}
            for name, path in [("onnxruntime float", float_path),
                               ("onnxruntime quantize_dynamic", tmp / "ort_dynamic.onnx"),
                               ("onnxruntime quantize_dynamic reduce_range", tmp / "ort_dynamic_rr.onnx"),
                               (OURS[0], dynamic_path), (OURS[1], fused_path)]:
                variants[name] = OnnxModel(path, threads)
            measure(variants, x, held_out, reference, threads, args, rows, duels)
    print(f"word LSTM: {args.layers} layers, input 512, hidden 256, 1000 words, sequence {args.seq}, "
          f"batch {args.batch}\n")
    print_tables(rows, duels)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "head_to_head": duels}, indent=1))


if __name__ == "__main__":
    main()
