"""Latency and fidelity of int8 transformers: qcompile vs torch.ao and onnxruntime's own tools, and float.

    python benchmarks/transformer_latency.py [--layers 6] [--seq 128] [--batch 1] [--threads 1 2]
                                             [--repeats 20] [--pairs 60] [--json out.json]

The model is a text encoder with DistilBERT's geometry (width 768, 12 heads,
feed-forward 3072, GELU, post-norm) built from ``nn.TransformerEncoder``, with
a mean-pooled classification head; weights are torch's default random
initialization and the inputs are random token embeddings (no text data
ships with qcompile's dependencies). torch.fx cannot trace
``nn.TransformerEncoder``, so qcompile lowers it through ``torch.export``.

Variants, all timed in the same process in interleaved rounds (see
``benchmarks/int8_latency.py``), as medians and as speed-ups over float torch
(which runs ``nn.TransformerEncoder``'s fused inference path):

* torch.ao ``quantize_dynamic`` on ``nn.Linear`` (it reaches the feed-forward
  linears and the head; attention's projections are not ``nn.Linear``);
* qcompile ``dynamic`` (every linear, attention's included), as the emitted
  PyTorch module and exported to onnxruntime, in the exact form (torch's
  rounding) and the ``fused`` one (onnxruntime's fused dynamic kernels,
  ``qcompile/onnx/fused_dynamic.py``);
* onnxruntime float, and onnxruntime's ``quantize_dynamic`` on the same float
  ONNX file, with its defaults and with ``reduce_range`` (7-bit weights, its
  advice for AVX2 CPUs without VNNI, where 8-bit products can saturate);
* qcompile static ``ptq --backend native`` (calibrated on 16 other random batches), exported
  to onnxruntime in QDQ form.

Fidelity is the SQNR (dB) of each variant's output against float torch on
held-out inputs. Last, per thread count, each of qcompile's dynamic exports is
timed head to head against each of onnxruntime's ``quantize_dynamic`` models
(``qcompile/timing.py``: adjacent pairs of runs, the ratio of the
10th-percentile times with a bootstrap 95% interval; above 1, qcompile's is
faster).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.int8_latency import NATIVE_PTQ, interleaved_medians_ms, quiet  # noqa: E402
from qcompile.codegen import load_model, write_model  # noqa: E402
from qcompile.frontend.lower import lower  # noqa: E402
from qcompile.onnx.export import export_onnx  # noqa: E402
from qcompile.onnx.runtime.session import OnnxModel  # noqa: E402
from qcompile.pipeline import PassContext, run_pipeline  # noqa: E402
from qcompile.timing import head_to_head  # noqa: E402
from tests.torchao_reference import sqnr  # noqa: E402

RIVALS = ("onnxruntime quantize_dynamic", "onnxruntime quantize_dynamic reduce_range")
OURS = ("qcompile dynamic -> onnxruntime", "qcompile dynamic fused -> onnxruntime")


class TextEncoder(nn.Module):
    def __init__(self, layers: int, width: int = 768, heads: int = 12, ff: int = 3072, classes: int = 2):
        super().__init__()
        layer = nn.TransformerEncoderLayer(width, heads, ff, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


def without_fast_path(module, data):
    """Run ``module`` with torch's fused transformer inference path off.

    torch.ao's dynamic Linear makes ``weight`` a method, and the fused
    path's device check (``x.device`` for each weight) fails on it in torch
    2.14, so torch.ao's int8 encoder runs only on the unfused path.
    """
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        return module(data)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


def emit(graph, directory: Path):
    write_model(graph, directory)
    return load_model(directory)


def main() -> None:
    args = parse_arguments(__doc__, layers=6, seq=128)
    quiet()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.manual_seed(0)
    model = TextEncoder(args.layers).eval()
    g = torch.Generator().manual_seed(1)
    calib = [(torch.randn(4, args.seq, 768, generator=g),) for _ in range(4)]
    x = torch.randn(args.batch, args.seq, 768, generator=g)
    held_out = torch.randn(8, args.seq, 768, generator=g)
    rows, duels = [], []
    with tempfile.TemporaryDirectory() as tmp_name, torch.no_grad():
        tmp = Path(tmp_name)
        float_graph = lower(model, (x[:1],))
        float_path = export_onnx(float_graph, tmp / "float.onnx")
        quantize_dynamic(str(float_path), str(tmp / "ort_dynamic.onnx"), weight_type=QuantType.QInt8)
        quantize_dynamic(str(float_path), str(tmp / "ort_dynamic_rr.onnx"), weight_type=QuantType.QInt8,
                         reduce_range=True)
        dynamic = lower(model, (x[:1],))
        run_pipeline(dynamic, "dynamic")
        dynamic_module = emit(dynamic, tmp / "dynamic")
        dynamic_path = export_onnx(dynamic, tmp / "dynamic.onnx")
        fused_path = export_onnx(dynamic, tmp / "dynamic_fused.onnx", dynamic="fused")
        static = lower(model, (x[:1],))
        run_pipeline(static, NATIVE_PTQ, PassContext(calib_data=calib))
        static_path = export_onnx(static, tmp / "static.onnx")
        torchao = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        reference = model(held_out)
        for threads in args.threads:
            torch.set_num_threads(threads)
            variants = {"float torch": model,
                        "torch.ao quantize_dynamic": lambda data: without_fast_path(torchao, data),
                        "qcompile dynamic (native)": dynamic_module}
            for name, path in [("onnxruntime float", float_path),
                               ("onnxruntime quantize_dynamic", tmp / "ort_dynamic.onnx"),
                               ("onnxruntime quantize_dynamic reduce_range", tmp / "ort_dynamic_rr.onnx"),
                               (OURS[0], dynamic_path), (OURS[1], fused_path),
                               ("qcompile ptq -> onnxruntime", static_path)]:
                variants[name] = OnnxModel(path, threads)
            measure(variants, x, held_out, reference, threads, args, rows, duels)
    print(f"text encoder: {args.layers} layers, width 768, sequence {args.seq}, batch {args.batch}\n")
    print_tables(rows, duels)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "head_to_head": duels}, indent=1))



def parse_arguments(doc: str, layers: int, seq: int) -> argparse.Namespace:
    """The command line of a sequence-model benchmark (this one, ``recurrent_latency.py``)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--layers", type=int, default=layers)
    parser.add_argument("--seq", type=int, default=seq)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=60, help="adjacent pairs of runs in each head-to-head timing")
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


def measure(variants: dict, x, held_out, reference, threads: int, args, rows: list, duels: list) -> None:
    """Time ``variants`` (name -> callable) in interleaved rounds, time each of qcompile's dynamic exports
    head to head against each of onnxruntime's ``quantize_dynamic`` models, and append the results to
    ``rows`` and ``duels``; fidelity is each variant's SQNR against ``reference`` on ``held_out``."""
    times = interleaved_medians_ms({name: (lambda f=f: f(x)) for name, f in variants.items()}, args.repeats)
    for ours in OURS:
        for rival in RIVALS:
            paired = head_to_head(partial(variants[ours], x), partial(variants[rival], x), args.pairs)
            duels.append({"threads": threads, "ours": ours, "rival": rival, "ratio": paired.ratio,
                          "low": paired.low, "high": paired.high, "pairs": paired.pairs})
    for name, f in variants.items():
        out = f(held_out)
        rows.append({"threads": threads, "variant": name, "ms": times[name],
                     "speedup": times["float torch"] / times[name],
                     "sqnr_db": float("inf") if name == "float torch" else sqnr(first(out), first(reference))})


def first(out):
    """The first output of a model that returns several (an LSTM's sequence), else the output."""
    return out[0] if isinstance(out, (tuple, list)) else out


def print_tables(rows: list, duels: list) -> None:
    print("| threads | variant | ms | speed-up over float torch | SQNR vs float (dB) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['threads']} | {r['variant']} | {r['ms']:.1f} | {r['speedup']:.2f}x | {r['sqnr_db']:.1f} |")
    print("\nhead to head: the rival's time over qcompile's (10th percentiles, 95% interval)\n")
    print("| threads | qcompile | rival | ratio |\n|---|---|---|---|")
    for d in duels:
        print(f"| {d['threads']} | {d['ours']} | {d['rival']} | {d['ratio']:.3f}x [{d['low']:.3f}, {d['high']:.3f}] |")


if __name__ == "__main__":
    main()
