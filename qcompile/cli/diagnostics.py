"""The command line's analyses after a compile run: ``--modes``, ``--entropy`` and the diagnostics.

``--modes`` (research, deployable and integer rows side by side) and
``--trace-error`` / ``--layers`` / ``--sensitivity`` / ``--report`` /
``--mlflow``: each checks its arguments before anything runs, adds its
instruments to the pipeline, and reports after the model is written.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from qcompile.errors import QCompileError
from qcompile.pipeline import SIMULATED


def modes_snapshot(options):
    from qcompile.diagnose.snapshot import Snapshot

    args, pipeline = options.args, options.pipeline
    if pipeline is None or not pipeline.provides(SIMULATED):
        raise QCompileError("--modes compares simulate's research mode with what integer kernels deliver, "
                            "and the pipeline has no simulate pass",
                            hint="e.g. --passes fuse,calibrate,aciq{bits=4 per-channel=true},simulate{bits=4}")
    if (args.check_data or args.calib) is None:
        raise QCompileError("--modes needs data to score on", hint="pass --check-data DATA (or --calib DATA)")
    return Snapshot()


def report_modes(options, snapshot, ctx, result) -> None:
    import json
    from dataclasses import asdict

    from qcompile.fileio import atomic_write_text
    from qcompile.modes import HEADER, compare_modes

    rows = compare_modes(snapshot, ctx, options.check_data())
    print(HEADER)
    for r in rows:
        print(r.row())
    print("The emitted model is the research row (fake quantization in float); "
          "an integer deployment delivers the integer row.")
    path = result.out_dir / "modes.json"
    atomic_write_text(path, json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    print(f"qcompile: wrote {Path(options.args.output) / path.name}", file=sys.stderr)


def diagnostics_for(options):
    args, pipeline = options.args, options.pipeline
    wanted = args.trace_error or args.layers or args.sensitivity is not None or args.report or args.mlflow
    if not wanted:
        return None
    names = [p.name for p in pipeline.passes] if pipeline is not None else []
    calibrated = next((i for i, n in enumerate(names) if n in ("calibrate", "load-stats")), None)
    if args.sensitivity is not None and (calibrated is None or not {"convert", "simulate"} & set(names[calibrated:])):
        raise QCompileError("--sensitivity needs a pipeline that calibrates, then converts or simulates",
                            hint="e.g. --passes ptq")
    spec = args.check_data or args.calib
    if spec is None:
        raise QCompileError("the diagnostics need data to run on", hint="pass --check-data DATA (or --calib DATA)")
    from qcompile.data import first_samples
    from qcompile.diagnose.session import Diagnostics

    inputs = first_samples(options.check_data(args.diagnose_samples), args.diagnose_samples)
    return Diagnostics(inputs, trace=args.trace_error or args.report or bool(args.mlflow))


def run_diagnostics(options, diagnostics, ctx, result, pipeline) -> None:
    from qcompile.diagnose.metrics import fmt_db

    args, passes = options.args, str(pipeline)
    final = result.graph
    if diagnostics.trace is not None and args.trace_error:
        print(diagnostics.trace.table())
    if args.layers or args.report or args.sensitivity is not None or args.mlflow:
        rows = diagnostics.per_layer(final)
        if args.layers:
            print("| layer | op | compared node | SQNR dB |\n|---|---|---|---|")
            for r in rows[:15]:
                print(f"| {r.name} | {r.op} | {r.compared} | {fmt_db(r.sqnr_db)} |")
    if args.sensitivity is not None:
        def rerun(skip: list[str]):
            return _rerun_with_skips(options, pipeline, skip)

        suggestion = diagnostics.sensitivity(ctx, args.sensitivity, rerun, final)
        print("| layer | op | alone dB | without dB |\n|---|---|---|---|")
        for r in sorted(diagnostics.findings.sensitivity, key=lambda r: -r.without_db)[:15]:
            print(f"| {r.name} | {r.op} | {fmt_db(r.alone_db)} | {fmt_db(r.without_db)} |")
        verdict = "meets" if suggestion.met else "does not reach"
        print(f"suggested skip list ({len(suggestion.skip)} layers, {verdict} {args.sensitivity:g} dB in emulation: "
              f"{fmt_db(suggestion.baseline_db)} -> {fmt_db(suggestion.achieved_db)} dB):")
        print(" ".join(f"--skip {name}" for name in suggestion.skip) or "(none)")
        for label, sqnr, agree in diagnostics.findings.verification:
            agree_text = "-" if agree is None else f"{agree:.4f}"
            print(f"real run {label}: output SQNR {fmt_db(sqnr)} dB, top-1 agreement {agree_text}")
    report = None
    if args.report:
        report = diagnostics.report(result.out_dir / "report.html", result.graph.name, passes, final, args.model,
                                    result.out_dir, options.check_data())
        print(f"qcompile: wrote {Path(args.output) / report.name}", file=sys.stderr)
    if args.mlflow:
        from qcompile.diagnose.tracking import log_run

        run_id = log_run(args.mlflow, args, passes, diagnostics, report)
        print(f"qcompile: logged MLflow run {run_id} to {args.mlflow}", file=sys.stderr)


def _rerun_with_skips(options, pipeline, skip: list[str]):
    """The same compile with ``skip`` added to the skip list (the graph, nothing written)."""
    from qcompile.compiler import compile_model
    from qcompile.pipeline import PassContext

    args = options.args
    ctx = PassContext(quant_config=dataclasses.replace(options.quant_config, skip=[*options.quant_config.skip, *skip]))
    ctx.statistics_file = args.stats
    return compile_model(args.model, passes=pipeline, input_shapes=args.input_shape, weights=args.weights,
                         trust_pickle=args.trust_pickle, ctx=ctx, calib=options.calibration_data(),
                         batch_size=args.batch_size).graph


def report_entropy(options, result) -> None:
    from qcompile.quant.entropy import code_entropy

    if "converted" not in result.graph.facts or options.args.calib is None:
        raise QCompileError("--entropy needs a converted graph and --calib data")
    rows, average = code_entropy(result.graph, options.calibration_data())
    print("| tensor | kind | bits per value | values |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r.name} | {r.kind} | {r.bits:.3f} | {r.values} |")
    print(f"| all | weighted by values | {average:.3f} | {sum(r.values for r in rows)} |")
