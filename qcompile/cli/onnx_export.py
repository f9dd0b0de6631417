"""The command line's ``--export onnx``: write OUT/model.onnx, report it, and check it with ``--check``."""

from __future__ import annotations

import argparse
import sys

from qcompile.cli.diagnostics import open_check_data
from qcompile.errors import QCompileError


def export_onnx_and_check(args: argparse.Namespace, result) -> None:
    """OUT/model.onnx from the compiled graph, its narrow-convolution decisions, and with ``--check`` the
    comparison with the emitted model in onnxruntime."""
    import onnx

    from qcompile.codegen import load_model as load_emitted
    from qcompile.onnx.check import HEADER, check_onnx, output_scales
    from qcompile.onnx.export import export_onnx
    from qcompile.onnx.narrow_convs import recorded

    path = export_onnx(result.graph, result.out_dir / "model.onnx", form=args.onnx_form,
                       narrow_convs=args.onnx_narrow_convs)
    print(f"qcompile: wrote {path} (onnx.checker passed)", file=sys.stderr)
    for record in recorded(onnx.load(str(path))):
        print(f"qcompile: onnx: {record.describe()}", file=sys.stderr)
    if not args.check:
        return
    if (args.check_data or args.calib) is None:
        raise QCompileError("--check needs data", hint="pass --check-data DATA (or --calib DATA)")
    batches = [tuple(b) for b in open_check_data(args)]  # one tensor per model input
    results = check_onnx(path, load_emitted(result.out_dir), batches, output_scales(result.graph),
                         graph=result.graph)
    print(HEADER)
    for r in results:
        print(r.row())
