"""onnxruntime latency and accuracy: qcompile's QDQ export vs onnxruntime's own quantize_static vs float.

    python benchmarks/onnx_export.py [--models resnet18 mobilenet_v2] [--json out.json]

All three ONNX models run in onnxruntime (graph optimizations on, one
thread); latency is the median of repeated batch-1 runs taken in interleaved
rounds (see ``benchmarks/int8_latency.py``), reported as a speed-up over the
float ONNX model measured in the same run. Agreement is the share of equal
top-1 predictions with the float model on the bundled photos (calibration
and evaluation use different crops), SQNR the output's against float's:
with random weights (every model but MobileNetV2) nearly every photo gets
the same class by a small margin, so agreement says little there and SQNR
is the measure to read. The last column times each of qcompile's int8
exports head to head against onnxruntime's model (``qcompile/timing.py``:
adjacent pairs of runs, the ratio of the 10th-percentile times with a
bootstrap 95% interval; above 1, qcompile's export is faster).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.int8_latency import (  # noqa: E402
    NATIVE_PTQ,
    build,
    interleaved_medians_ms,
    onnxruntime_int8,
    photo_split,
    quiet,
)
from qcompile.frontend.lower import lower  # noqa: E402
from qcompile.onnx.export import export_onnx  # noqa: E402
from qcompile.onnx.runtime.check import run_onnxruntime  # noqa: E402
from qcompile.onnx.runtime.session import OnnxModel  # noqa: E402
from qcompile.pipeline import PassContext, run_pipeline  # noqa: E402
from qcompile.timing import head_to_head  # noqa: E402
from tests.torchao_reference import sqnr  # noqa: E402

RIVAL = "onnxruntime quantize_static"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--pairs", type=int, default=100, help="adjacent pairs of runs in each head-to-head timing")
    parser.add_argument("--json")
    args = parser.parse_args()
    quiet()
    calib, evaluation = photo_split()
    rows = []
    print("| model | ONNX model | agreement with float | SQNR vs float (dB) | ORT ms (batch 1) "
          "| speed-up vs float ONNX | vs onnxruntime's, head to head |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        model = build(name)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            float_graph = lower(model, (calib[0][0][:1],))
            run_pipeline(float_graph, "fuse")
            paths = {"float (qcompile export)": export_onnx(float_graph, tmp / "float_q.onnx")}
            graph = lower(model, (calib[0][0][:1],))
            run_pipeline(graph, NATIVE_PTQ, PassContext(calib_data=calib))
            paths["qcompile int8 (QDQ export)"] = export_onnx(graph, tmp / "qcompile.onnx")
            paths["qcompile int8 (QOperator export)"] = export_onnx(graph, tmp / "qcompile_qop.onnx",
                                                                    form="qoperator")
            onnxruntime_int8(model, calib, tmp, 1)
            paths[RIVAL] = tmp / "int8.onnx"
            reference = run_onnxruntime(paths["float (qcompile export)"], [evaluation], True)
            sessions = {label: OnnxModel(path, 1) for label, path in paths.items()}
            one = evaluation[:1]
            timings = interleaved_medians_ms({label: partial(model_, one) for label, model_ in sessions.items()},
                                             args.repeats)
            for label, session in sessions.items():
                out = session(evaluation)
                agreement = float((out.argmax(1) == reference.argmax(1)).float().mean())
                quality = sqnr(out, reference) if label != "float (qcompile export)" else float("inf")
                row = dict(model=name, onnx=label, agreement=agreement, sqnr_db=quality, ms=timings[label],
                           speedup=timings["float (qcompile export)"] / timings[label])
                duel = "-"
                if label.startswith("qcompile int8"):
                    paired = head_to_head(partial(session, one), partial(sessions[RIVAL], one), args.pairs)
                    row["head_to_head"] = dict(ratio=paired.ratio, low=paired.low, high=paired.high)
                    duel = str(paired)
                rows.append(row)
                print(f"| {name} | {label} | {agreement:.4f} | {quality:.1f} | {row['ms']:.2f} "
                      f"| {row['speedup']:.2f}x | {duel} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
