"""The command line's ``--export onnx``: write OUT/model.onnx, report it, and check it with ``--check``.

Before OUT is written, :func:`before_write` builds the file in memory and checks the data ``--check``
(and ``--modes``) will run on, so that either failing leaves nothing behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qcompile.cli.argtypes import positive_int


def add_onnx_arguments(parser: argparse.ArgumentParser) -> None:
    """The compile command's options for the ONNX export's form and its narrow-convolution timings."""
    parser.add_argument("--onnx-form", choices=("qdq", "qoperator"), default="qdq",
                        help="qdq: Quantize/DequantizeLinear around float ops (any graph); qoperator: "
                        "QLinearConv, QLinearAdd... (int8 graphs)")
    parser.add_argument("--onnx-narrow-convs", choices=("auto", "measure", "pad", "space-to-depth", "plain"),
                        default="auto",
                        help="int8 convolutions whose input channels are not a multiple of 4 (the first one): "
                        "auto rewrites them (padded to 4 channels, or space-to-depth) where onnxruntime runs the "
                        "layer faster on this machine; measure where the whole model runs measurably faster at "
                        "--onnx-batch and --onnx-threads (slower); pad or space-to-depth always; plain never")
    parser.add_argument("--onnx-dynamic", choices=("exact", "fused"), default="exact",
                        help="dynamically quantized linears and LSTMs: exact rounds as the emitted model (torch's "
                        "int8 kernels) does; fused is onnxruntime's DynamicQuantizeMatMul / DynamicQuantizeLSTM "
                        "with 7-bit weights: faster, rounding its own way, onnxruntime only")
    parser.add_argument("--onnx-batch", type=positive_int, default=1, metavar="N",
                        help="batch size the export will run at, for --onnx-narrow-convs measure (1)")
    parser.add_argument("--onnx-threads", type=positive_int, default=1, metavar="N",
                        help="onnxruntime threads the export will run with, for those timings (1)")


class Preflight:
    """Checks on the compiled graph before OUT is written, so that a failure leaves nothing behind: with
    --export onnx the ONNX model is built in memory (a graph the exporter does not take fails here), and
    the data --check and --modes run on is read and checked against the model's inputs. What it built and
    read is kept for the export and the check that follow (``model``, ``batches``)."""

    def __init__(self, options):
        self.options = options
        self.model = None  # the in-memory ONNX model
        self.batches: list[tuple] | None = None  # the check data, one tensor per model input

    def __call__(self, graph) -> None:
        args = self.options.args
        if "onnx" in args.export:
            from qcompile.onnx.export import build_onnx

            self.model = build_onnx(graph, form=args.onnx_form, dynamic=args.onnx_dynamic)
        if _scored(args):
            from qcompile.passes.calibrate import check_batch

            self.batches = [tuple(batch) for batch in self.options.check_data()]
            for index, batch in enumerate(self.batches):
                check_batch(graph, batch, index, purpose="--check-data" if args.check_data else "--calib")


def _scored(args: argparse.Namespace) -> bool:
    """Whether --check or --modes will run the model on data."""
    return bool((args.check and "onnx" in args.export) or args.modes)


def before_write(options) -> Preflight | None:
    """The checks to run before OUT is written, or None where there are none."""
    args = options.args
    return Preflight(options) if "onnx" in args.export or _scored(args) else None


def export_onnx_and_check(options, result, progress=None, preflight: Preflight | None = None) -> None:
    """OUT/model.onnx from the compiled graph, its narrow-convolution decisions, and with ``--check`` the
    comparison with the emitted model in onnxruntime. Where their outputs differ by more than one step, the
    export is judged against the float model beside the module (:mod:`qcompile.onnx.runtime.verdict`): as close
    passes with a note, further fails (exit 3)."""
    import onnx

    from qcompile.codegen import load_model as load_emitted
    from qcompile.errors import CheckFailed
    from qcompile.onnx.export import export_onnx
    from qcompile.onnx.fused_dynamic import uses_fused_kernels
    from qcompile.onnx.runtime.check import HEADER, check_onnx, output_scales
    from qcompile.onnx.runtime.narrow_convs import recorded
    from qcompile.onnx.runtime.verdict import against_float

    args = options.args
    if args.onnx_narrow_convs == "measure":
        print(f"qcompile: onnx: timing the whole model with each rewrite of its narrow convolutions against it "
              f"plain in onnxruntime (batch {args.onnx_batch}, {args.onnx_threads} threads; 60 to 240 pairs of "
              "runs each, seconds to a few minutes)", file=sys.stderr)
    path = export_onnx(result.graph, result.out_dir / "model.onnx", form=args.onnx_form,
                       narrow_convs=args.onnx_narrow_convs, threads=args.onnx_threads, batch=args.onnx_batch,
                       dynamic=args.onnx_dynamic, built=preflight.model if preflight is not None else None)
    print(f"qcompile: wrote {Path(args.output) / path.name} (onnx.checker passed)", file=sys.stderr)
    written = onnx.load(str(path))
    for record in recorded(written):
        print(f"qcompile: onnx: {record.describe()}", file=sys.stderr)
    if args.onnx_dynamic == "fused" and not uses_fused_kernels(written):
        print("qcompile: onnx: --onnx-dynamic fused changed nothing: the graph has no dynamically quantized "
              "linear or LSTM (the dynamic pass makes them)", file=sys.stderr)
    if not args.check:
        return
    batches = (preflight.batches if preflight is not None and preflight.batches is not None
               else [tuple(b) for b in options.check_data()])  # one tensor per model input
    emitted = load_emitted(result.out_dir)
    try:
        results = check_onnx(path, emitted, batches, output_scales(result.graph), graph=result.graph,
                             progress=progress)
    except CheckFailed as failed:
        verdicts = against_float(result.float_module, path, emitted, batches)
        if verdicts is None or not all(v.as_close for v in verdicts):
            details = "; ".join(v.describe() for v in verdicts or [])
            raise CheckFailed(failed.message + (f". Against the float model, {details}" if details else ""),
                              hint=failed.hint) from None
        print("qcompile: check: the export's outputs differ from the emitted module's by more than one step "
              f"({failed.message.split(': ', 1)[-1]}), but it is as close to the float model as the module: "
              + "; ".join(v.describe() for v in verdicts)
              + ". These are rounding differences this model amplifies, not a wrong export; judge it by "
              "those numbers.", file=sys.stderr)
        results = check_onnx(path, emitted, batches, output_scales(result.graph), min_share=0.0, graph=result.graph)
    print(HEADER)
    for r in results:
        print(r.row())
