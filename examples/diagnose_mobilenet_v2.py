"""Where did MobileNetV2's accuracy go? Seed 004's low-accuracy case, diagnosed and fixed.

    python examples/diagnose_mobilenet_v2.py [--target 12] [--out out/mobilenet_v2_diagnosed]

The real MobileNetV2 with the ``default`` preset (per-tensor min/max, as in
the seed) agrees poorly with the float model. This runs ``ptq`` with the
diagnostics on: the error after each pass, the worst layers, each layer's
sensitivity, and a skip list for a target output SQNR. It then compiles again
with that skip list and scores both int8 models against float on held-out
photo crops (calibration uses the other half), and writes the HTML report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qcompile.codegen import write_model  # noqa: E402
from qcompile.data import open_data  # noqa: E402
from qcompile.diagnose.metrics import fmt_db  # noqa: E402
from qcompile.diagnose.session import Diagnostics  # noqa: E402
from qcompile.frontend.loaders import load_model  # noqa: E402
from qcompile.frontend.lower import lower  # noqa: E402
from qcompile.pipeline import PassContext, PassManager, parse_pipeline  # noqa: E402
from qcompile.quant.config import load_quant_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=12.0, help="output SQNR (dB) the skip list should reach")
    parser.add_argument("--samples", type=int, default=16, help="held-out images the diagnostics run on")
    parser.add_argument("--out", default="out/mobilenet_v2_diagnosed")
    args = parser.parse_args()
    model = load_model("zoo:mobilenet_v2").module
    calib, evaluation = open_data("builtin:photos", batch_size=16).interleaved_split()
    held_out = torch.cat([b[0] for b in evaluation])
    diagnostics = Diagnostics((held_out[:args.samples],))

    def compile_ptq(skip: list[str], instruments=()):
        graph = lower(model, (held_out[:1],))
        ctx = PassContext(calib_data=calib, quant_config=load_quant_config(preset="default", skip=skip))
        PassManager(parse_pipeline("ptq"), instruments).run(graph, ctx)
        return graph, ctx

    graph, ctx = compile_ptq([], diagnostics.instruments())
    print(diagnostics.trace.table())
    print("\nworst layers:")
    for row in diagnostics.per_layer(graph)[:8]:
        print(f"  {row.name} ({row.op}): {fmt_db(row.sqnr_db)} dB")
    suggestion = diagnostics.sensitivity(ctx, args.target, lambda skip: compile_ptq(skip)[0], graph)
    print(f"\nsuggested skip list ({len(suggestion.skip)} layers): {' '.join(suggestion.skip)}")
    skipped, _ = compile_ptq(suggestion.skip)
    everything = Diagnostics((held_out,))
    everything.snapshot.float_graph = diagnostics.snapshot.float_graph
    print(f"\nall {len(held_out)} held-out crops:")
    for label, g in (("ptq, default preset", graph), ("with the suggested skips", skipped)):
        sqnr, agree = everything.score(g)
        print(f"  {label}: output SQNR {fmt_db(sqnr)} dB, top-1 agreement with float {agree:.4f}")
    out = Path(args.out)
    write_model(graph, out)
    report = diagnostics.report(out / "report.html", "MobileNetV2, default preset", "ptq", graph,
                                "zoo:mobilenet_v2", out, evaluation)
    print(f"\nwrote {report}")


if __name__ == "__main__":
    main()
