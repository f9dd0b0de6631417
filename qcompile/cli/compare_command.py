"""``qcompile compare MODEL OUT...``: the float model beside quantized variants, run only where trusted."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qcompile.errors import QCompileError


def run_compare(args: argparse.Namespace) -> int:
    """The comparison table; an output directory runs only if this user's qcompile signed it, or --trust-out."""
    from qcompile.codegen import load_model as load_emitted
    from qcompile.compare import compare, format_table, state_size_bytes, write_json
    from qcompile.data import open_data
    from qcompile.frontend.loaders import load_model
    from qcompile.provenance import is_signed

    data = open_data(args.data, preprocess=args.preprocess, limit=args.samples, batch_size=args.batch_size)
    loaded = load_model(args.model, weights=args.weights, trust_pickle=args.trust_pickle)
    for note in loaded.notes:
        print(f"qcompile: note: {note}", file=sys.stderr)
    reference = loaded.module
    models = [("float", reference, state_size_bytes(reference))]
    for out in args.variants:
        path = Path(out)
        if path.suffix == ".onnx":
            from qcompile.onnx.runtime.session import OnnxModel

            models.append((f"{path.parent.name}/{path.name} (onnxruntime)", OnnxModel(path, args.threads),
                           path.stat().st_size))
            continue
        if not (path / "model.py").is_file():
            raise QCompileError(f"{out} is neither a qcompile output directory (no model.py) nor an .onnx file",
                                hint="pass directories written by qcompile MODEL ... -o OUT, or OUT/model.onnx "
                                     "from --export onnx (run in onnxruntime)")
        if not args.trust_out and not is_signed(path):
            raise QCompileError(
                f"{out} was not written by qcompile as this user (or its model.py changed since): compare imports "
                "and runs OUT/model.py, which would run code from someone else",
                hint=f"read {path / 'model.py'} first; if you trust it, pass --trust-out")
        models.append((path.name, load_emitted(path), (path / "weights.pt").stat().st_size))
    rows = compare(models, data, threads=args.threads, repeats=args.repeats, latency_batch=args.latency_batch,
                   class_dim=args.class_dim)
    print(format_table(rows))
    if args.json:
        write_json(rows, args.json, data=args.data, threads=args.threads, repeats=args.repeats,
                   latency_batch=args.latency_batch, class_dim=args.class_dim)
    return 0
