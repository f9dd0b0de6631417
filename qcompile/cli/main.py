"""The ``qcompile`` command.

::

    qcompile MODEL [--passes PIPELINE] -o OUT          compile (the main job)
    qcompile inspect MODEL [--passes ...] [--print-after PASS|all] [--dump-dir D] [--format qir|dot|svg]
    qcompile passes [NAME]                             list passes (or show one)
    qcompile zoo                                       list bundled models

User mistakes print ``qcompile: error: ...`` with a hint and exit with status 2
(:data:`qcompile.cli.defaults.EXIT_STATUS` lists every status).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from qcompile.backends.torch_ao.warnings import ignore_torch_deprecations
from qcompile.cli.argtypes import finite_float, positive_int
from qcompile.cli.compare_command import run_compare
from qcompile.cli.defaults import EXIT_STATUS, RECOMMENDED_PIPELINE
from qcompile.cli.diagnostics import (
    diagnostics_for,
    modes_snapshot,
    report_entropy,
    report_modes,
    run_diagnostics,
)
from qcompile.cli.listing import list_passes, list_zoo
from qcompile.cli.onnx_export import add_onnx_arguments, before_write, export_onnx_and_check
from qcompile.cli.options import RunOptions
from qcompile.cli.progress import ProgressPrinter
from qcompile.cli.ranks import RUNS_PASSES, environment_rank, join_world, parse_quietly
from qcompile.cli.target_options import accuracy_target, add_target_arguments
from qcompile.cli.verdict_command import print_verdict, run_verdict
from qcompile.distributed import World, single_process
from qcompile.errors import CheckFailed, QCompileError, TargetMissed
from qcompile.frontend.dynamic_axes import parse_dynamic_axes

COMMANDS = ("inspect", "passes", "zoo", "compile", "compare")


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file (.pt2 export archive, TorchScript, pickled module), "
                        "package.module:factory, or zoo:NAME")
    parser.add_argument("--weights", help="state-dict file for a package.module:factory model")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow loading a fully pickled module, a TorchScript file, or a .pt2 archive that "
                        "stores pickled objects beyond tensors (each runs code from the file)")
    parser.add_argument("--input-shape", action="append", default=[], metavar="SHAPE",
                        help="shape of a model input, e.g. 1,3,224,224, or 1,128:int64 for token ids "
                        "(repeat for several inputs)")
    parser.add_argument("--frontend", choices=("fx", "export"), default="fx",
                        help="how a Python model is lowered: torch.fx (default; torch.export where fx "
                        "fails), or always torch.export (torch.nn modules such as MultiheadAttention "
                        "become their operations, so their linears quantize too)")
    parser.add_argument("--dynamic-axes", type=parse_dynamic_axes, default=(), metavar="AXES",
                        help="axes besides the batch whose size varies between calls, e.g. 1 for a "
                        "sequence length in every input that has it, or ids:1,mask:1 for named inputs "
                        "(forward()'s parameters): kept symbolic when lowering, dynamic in an ONNX export")
    parser.add_argument("--passes", default=None, metavar="PIPELINE",
                        help="comma-separated passes with options, e.g. 'fuse{activations=false}', "
                        "or a named pipeline (see 'qcompile passes')")
    parser.add_argument("--calib", metavar="DATA",
                        help="calibration data: image folder, .npz/.pt file, module:function, or "
                        "builtin:photos / builtin:fashion-train / builtin:mnist5k")
    parser.add_argument("--calib-samples", type=positive_int, metavar="N", help="use at most N calibration samples")
    parser.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="calibration batch size (32)")
    parser.add_argument("--preprocess", metavar="PRESET",
                        help="imagenet, mnist, grey-half, unit or none (default: per data source)")
    parser.add_argument("--save-stats", metavar="FILE", help="save the calibration statistics after the run")
    parser.add_argument("--stats", metavar="FILE",
                        help="statistics saved earlier, for the load-stats pass (instead of calibrate + data)")
    parser.add_argument("--train", metavar="DATA", help="labelled training data for the 'train' pass (QAT)")
    parser.add_argument("--train-samples", type=positive_int, metavar="N", help="use at most N training samples")
    parser.add_argument("--preset", metavar="NAME",
                        help="quantization preset: x86 (the default), default, fbgemm, qnnpack (PyTorch's own quantization configs)")
    parser.add_argument("--qconfig", metavar="FILE", help="quantization config file (TOML or JSON)")
    parser.add_argument("--skip", action="append", default=[], metavar="PATTERN",
                        help="keep matching layers float (node name / module path glob, or op:TYPE)")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                        help="load user passes from a .py file or module (repeatable)")
    parser.add_argument("--print-after", action="append", default=[], metavar="PASS",
                        help="print the graph after PASS ('all' for every pass; repeatable)")
    parser.add_argument("--print-unchanged", action="store_true",
                        help="with --print-after, print even when a pass changed nothing")
    parser.add_argument("--dump-dir", metavar="DIR",
                        help="write the graph before and after every pass (00_input.qir, 01_fuse.qir, ...)")
    parser.add_argument("--dump-format", default="qir,dot", metavar="FORMATS",
                        help="formats for --dump-dir: any of qir,dot,svg (default qir,dot)")
    parser.add_argument("--timing", action="store_true", help="print the time each pass took")
    parser.add_argument("--debug", action="store_true",
                        help="explain pass decisions (e.g. why a fusion candidate did not match)")


def _build_parsers() -> dict[str, argparse.ArgumentParser]:
    compile_p = argparse.ArgumentParser(
        prog="qcompile",
        description="Compile a PyTorch model through qcompile's pass pipeline and emit a "
        "readable eager-mode module. Other commands: qcompile inspect | passes | zoo | compare "
        "(run 'qcompile COMMAND -h'); qcompile --version. Without --passes it runs the recommended "
        f"post-training static quantization, {RECOMMENDED_PIPELINE}. Started by torchrun "
        "(torchrun --nproc_per_node N -m qcompile ...), calibration, bias correction and training run on N "
        "processes, and rank 0 writes OUT (docs/distributed.md).",
        epilog=EXIT_STATUS,
    )
    _model_arguments(compile_p)
    compile_p.add_argument("-o", "--output", required=True, metavar="OUT",
                           help="directory for model.py, weights.pt and graph.qir")
    compile_p.add_argument("--deploy", choices=("torchscript", "export"), action="append", default=[],
                           help="also save a deployable artefact: torchscript -> OUT/model.torchscript.pt, "
                           "export -> OUT/model.pt2 (torch.export: float models, and int8 on qcompile's kernels, which it "
                           "makes backend=auto choose)")
    compile_p.add_argument("--backend", choices=("auto", "gemmlowp", "native"),
                           help="integer kernels for convert: gemmlowp (qcompile's own fixed-point kernels, "
                           "exportable, full 8-bit grids), native (torch's x86/fbgemm/qnnpack engines, deprecated "
                           "upstream, 7-bit grids on x86) or auto (the default: gemmlowp where its kernels cover "
                           "every quantized op of the model, native otherwise)")
    compile_p.add_argument("--export", choices=("onnx",), action="append", default=[],
                           help="also export: onnx -> OUT/model.onnx (QDQ form for int8 models)")
    compile_p.add_argument("--entropy", action="store_true",
                           help="report the entropy (bits per value) of the int8 codes per layer, on --calib data")
    add_onnx_arguments(compile_p)
    compile_p.add_argument("--check", action="store_true",
                           help="run the ONNX export in onnxruntime (optimizations off and on) and compare "
                           "with the emitted model; exit 3 if more than 1%% of outputs differ by over 1 LSB")
    compile_p.add_argument("--modes", action="store_true",
                           help="score simulate's research mode, the deployable (per-tensor) mode and the "
                           "integer model side by side on --check-data; table on stdout, OUT/modes.json")
    compile_p.add_argument("--trace-error", action="store_true",
                           help="output SQNR against float after every pass, on --diagnose-samples of --check-data")
    compile_p.add_argument("--layers", action="store_true",
                           help="SQNR of every quantized tensor against its float twin, worst first")
    compile_p.add_argument("--sensitivity", type=finite_float, metavar="DB",
                           help="each layer quantized alone / left float alone, and a skip list that brings the "
                           "output SQNR to DB (checked by rerunning the pipeline with it)")
    compile_p.add_argument("--report", action="store_true",
                           help="write OUT/report.html: summary, comparison, pipeline, graph, per-layer error, "
                           "histograms, ACIQ curves, bit allocation, sensitivity")
    compile_p.add_argument("--diagnose-samples", type=positive_int, default=16, metavar="N",
                           help="samples the diagnostics run on (16)")
    compile_p.add_argument("--mlflow", metavar="URI",
                           help="log parameters, metrics and the report to MLflow (e.g. file:./mlruns; "
                           "pip install 'qcompile[mlflow]')")
    compile_p.add_argument("--check-data", metavar="DATA",
                           help="data for the verdict, --check, --modes and the diagnostics (default: --calib; "
                           "the verdict prefers data calibration did not see: the held-out twin of a built-in set, "
                           "or --calib after the first --calib-samples)")
    compile_p.add_argument("--check-samples", type=positive_int, default=64, metavar="N",
                           help="samples of that data the verdict and --check score on (64)")
    add_target_arguments(compile_p)
    compile_p.add_argument("--no-verdict", action="store_true",
                           help="skip the verdict after the compile (size, closeness to float, latency, float "
                           "layers, advice; a few seconds)")
    compile_p.add_argument("--json", action="store_true",
                           help="print the verdict as JSON on stdout (it is always written to OUT/verdict.json)")

    inspect_p = argparse.ArgumentParser(
        prog="qcompile inspect", description="Lower a model, run passes, and show the graph.")
    _model_arguments(inspect_p)
    inspect_p.add_argument("--format", choices=("qir", "dot", "svg"), default="qir")
    inspect_p.add_argument("-o", "--output", metavar="FILE", help="write the graph here instead of stdout")

    passes_p = argparse.ArgumentParser(prog="qcompile passes", description="List the registered passes.")
    passes_p.add_argument("name", nargs="?", help="show this pass in full")
    passes_p.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE")

    zoo_p = argparse.ArgumentParser(prog="qcompile zoo", description="List the bundled models.")
    compare_p = argparse.ArgumentParser(
        prog="qcompile compare",
        description="Compare a float model with quantized variants (qcompile output directories, or their ONNX "
        "exports run in onnxruntime): size on disk, accuracy or agreement, latency. An output directory is run "
        "by importing its model.py: compare runs only directories that qcompile wrote as this user (signed "
        "with a key in ~/.config/qcompile), unless --trust-out is given.")
    compare_p.add_argument("model", help="the float model (as for qcompile MODEL)")
    compare_p.add_argument("variants", nargs="+", metavar="OUT",
                           help="directories written by qcompile -o, or .onnx files (OUT/model.onnx from --export "
                                "onnx), which run in onnxruntime with the same --threads")
    compare_p.add_argument("--data", required=True, help="evaluation data (labelled data gives accuracy)")
    compare_p.add_argument("--samples", type=positive_int, help="use at most this many samples")
    compare_p.add_argument("--preprocess", metavar="PRESET")
    compare_p.add_argument("--batch-size", type=positive_int, default=64)
    compare_p.add_argument("--weights")
    compare_p.add_argument("--trust-pickle", action="store_true",
                           help="allow loading a pickled module or TorchScript file as MODEL (runs code from it)")
    compare_p.add_argument("--trust-out", action="store_true",
                           help="run OUT/model.py even where this user's qcompile did not write it (it is Python "
                           "code: read it first)")
    compare_p.add_argument("--threads", type=positive_int, default=1, help="torch threads for the latency runs (1)")
    compare_p.add_argument("--repeats", type=positive_int, default=20, help="timed runs per model (median is kept)")
    compare_p.add_argument("--latency-batch", type=positive_int, default=1, help="batch size of the latency runs (1)")
    compare_p.add_argument("--class-dim", type=int, metavar="D",
                           help="axis of the first output that holds class scores, for agreement and accuracy "
                                "(default: 1 for [N, C] outputs; otherwise read from the labels' shape, e.g. the "
                                "last axis of a tagger's [N, T, C] scores against [N, T] labels)")
    compare_p.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    return {"compile": compile_p, "inspect": inspect_p, "passes": passes_p, "zoo": zoo_p, "compare": compare_p}


def _instruments(args: argparse.Namespace):
    from qcompile.pipeline import DumpDir, PrintAfter, Timing

    instruments = []
    if args.print_after:
        names = None if "all" in args.print_after else set(args.print_after)
        instruments.append(PrintAfter(names, only_changed=not args.print_unchanged))
    if args.dump_dir:
        formats = tuple(f.strip() for f in args.dump_format.split(",") if f.strip())
        bad = set(formats) - {"qir", "dot", "svg"}
        if bad:
            raise QCompileError(f"unknown --dump-format {sorted(bad)}", hint="use any of qir,dot,svg")
        instruments.append(DumpDir(args.dump_dir, formats))
    timing = Timing() if args.timing else None
    if timing:
        instruments.append(timing)
    return instruments, timing


def _run(args: argparse.Namespace, command: str, world: World) -> int:
    options = RunOptions.settle(args, command)  # every decision the arguments make, before any work
    if command != "compile":
        return _run_staged(options, None, world)
    from qcompile.output_dir import StagedOutput

    staged = None
    with world.together("preparing OUT"):  # only rank 0 writes OUT
        if world.is_main:
            staged = StagedOutput.create(args.output)  # OUT problems surface before any work
    if staged is None:
        return _run_staged(options, None, world)
    # files asked for inside OUT go into the stage, or OUT's replacement would drop them
    args.save_stats, args.dump_dir = staged.redirect(args.save_stats), staged.redirect(args.dump_dir)
    try:
        status = _run_staged(options, staged, world)
    except CheckFailed:
        staged.commit()  # the files are written; the ONNX check says they disagree (exit 3)
        raise
    finally:
        staged.discard()
    return status


def _run_staged(options: RunOptions, staged, world: World) -> int:
    """The run itself; a compile writes into ``staged.path``, which becomes OUT only at the end.

    Ranks other than 0 (under torchrun) run the pipeline without OUT and stop after it.
    """
    from qcompile.compiler import compile_model
    from qcompile.pipeline import PassContext

    args, command, pipeline = options.args, options.command, options.pipeline
    compiling = command == "compile"
    if pipeline is not None and pipeline.inserted and world.is_main:
        print(f"qcompile: pipeline expanded to: {pipeline}", file=sys.stderr)
    instruments, timing = _instruments(args) if world.is_main else ([], None)
    snapshot = modes_snapshot(options) if compiling and args.modes and world.is_main else None
    if snapshot is not None:
        instruments.append(snapshot)
    diagnostics = diagnostics_for(options) if compiling and world.is_main else None
    preflight = before_write(options) if compiling else None  # builds the ONNX model once, before OUT
    if diagnostics is not None:
        instruments.extend(diagnostics.instruments())
    target, target_inputs = accuracy_target(options, world, instruments) if compiling else (None, None)
    progress = ProgressPrinter()
    ctx = PassContext(debug=args.debug, quant_config=options.quant_config,
                      progress=progress if world.is_main else None,
                      log=None if world.is_main else (lambda message: None))
    ctx.world = world
    ctx.statistics_file = args.stats
    if args.train:
        ctx.train_data = options.open_data(args.train, preprocess=args.preprocess, limit=args.train_samples,
                                           batch_size=args.batch_size)
    result = compile_model(
        args.model,
        passes=pipeline,  # parsed once, by RunOptions
        out_dir=staged.path if staged is not None else None,
        input_shapes=args.input_shape,
        weights=args.weights,
        trust_pickle=args.trust_pickle,
        ctx=ctx,
        instruments=instruments,
        calib=options.calibration_data(),
        batch_size=args.batch_size,
        frontend=args.frontend,
        dynamic_axes=args.dynamic_axes,
        before_write=preflight,
        target=target,
        target_inputs=target_inputs,
        write_best=getattr(args, "write_best", False),
    ) if pipeline is not None else _lower_only(args)
    pipeline = result.pipeline or pipeline  # after an accuracy search, the pipeline it chose
    world.finished = True
    if not world.is_main:
        return 0
    ctx.world = single_process()  # what follows (checks, diagnostics, verdict) runs on rank 0 alone
    if args.save_stats:
        from qcompile.quant.stats_io import save_statistics

        written = save_statistics(result.graph, args.save_stats)
        print(f"qcompile: wrote {staged.shown(written) if staged is not None else written}", file=sys.stderr)
    for note in result.notes:
        print(f"qcompile: note: {note}", file=sys.stderr)
    for record in result.records:
        stats = ", ".join(f"{k}: {v}" for k, v in record.result.stats.items())
        changed = "changed" if record.result.modified else "unchanged"
        print(f"qcompile: {record.pass_.name}: {changed}" + (f" ({stats})" if stats else ""), file=sys.stderr)
    if timing is not None:
        print(timing.table(), file=sys.stderr)
    if compiling and "export" in args.deploy:
        from qcompile.deploy import save_export

        path, diff = save_export(result.out_dir, result.example_inputs, result.check_inputs)
        print(f"qcompile: wrote {staged.target / path.name} (torch.export; reloaded: outputs identical within "
              f"{diff:.3g})", file=sys.stderr)
    if compiling and "torchscript" in args.deploy:
        from qcompile.deploy import save_torchscript

        path, diff = save_torchscript(result.out_dir, result.example_inputs, result.check_inputs)
        print(f"qcompile: wrote {staged.target / path.name} (reloaded: outputs identical within {diff:.3g})",
              file=sys.stderr)
    if compiling and args.entropy:
        report_entropy(options, result)
    if compiling and "onnx" in args.export:
        export_onnx_and_check(options, result, progress, preflight)
    if snapshot is not None:
        report_modes(options, snapshot, ctx, result)
    if diagnostics is not None:
        run_diagnostics(options, diagnostics, ctx, result, pipeline)
    if not compiling:
        _show(result.graph, args)
        return 0
    verdict = None if args.no_verdict else run_verdict(options, result, str(pipeline), progress)
    staged.commit()
    print(f"qcompile: wrote {staged.target}/model.py, weights.pt, graph.qir "
          f"({result.graph.name}, {len(result.graph)} nodes); emitted module matches the graph "
          f"within {result.check:.3g} on {result.check_inputs.source}", file=sys.stderr)
    if verdict is not None:
        print_verdict(verdict, as_json=args.json)
    if result.trials and not result.trials[-1].met:
        from qcompile.target_search import chosen

        print(f"qcompile: target missed: wrote the closest pipeline, {chosen(result.trials, target).describe()} "
              "(--write-best)", file=sys.stderr)
        return 4
    return 0


def _lower_only(args: argparse.Namespace):
    from qcompile.compiler import CompileResult, example_inputs_for, example_tensor
    from qcompile.frontend.loaders import load_model
    from qcompile.frontend.lower import lower

    examples = tuple(example_tensor(s) for s in args.input_shape) or None
    loaded = load_model(args.model, weights=args.weights, trust_pickle=args.trust_pickle,
                        example_inputs=examples)
    notes = list(loaded.notes)
    graph = lower(loaded.module, example_inputs_for(loaded, args.input_shape), notes, args.frontend, args.dynamic_axes)
    return CompileResult(graph, [], notes=notes)


def _show(graph, args: argparse.Namespace) -> None:
    from qcompile.fileio import atomic_write_text
    from qcompile.ir import print_graph, to_dot, to_svg

    text = {"qir": print_graph, "dot": to_dot, "svg": to_svg}[args.format](graph)
    if args.output:
        atomic_write_text(args.output, text)
        print(f"qcompile: wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qcompile`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):
        print(f"qcompile {_version()}")
        return 0
    try:
        return _main(argv)
    except BrokenPipeError:  # the reader went away (qcompile passes | head): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
        return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qcompile")
    except PackageNotFoundError:
        return "(not installed)"


def _main(argv: list[str]) -> int:
    ignore_torch_deprecations()
    parsers = _build_parsers()
    command = argv[0] if argv and argv[0] in COMMANDS else "compile"
    if argv and argv[0] in COMMANDS:
        argv = argv[1:]
    args = parse_quietly(parsers[command], argv)
    speaks = environment_rank() == 0  # under torchrun only rank 0 prints; a failure anywhere reaches it
    if command not in RUNS_PASSES and not speaks:
        return 0  # listing and comparing need one process
    world = None
    try:
        if command == "passes":
            return list_passes(args)
        if command == "zoo":
            return list_zoo()
        if command == "compare":
            return run_compare(args)
        world = join_world(command)
        return _run(args, command, world)
    except CheckFailed as exc:
        print(f"qcompile: check failed: {exc}", file=sys.stderr)
        return 3
    except TargetMissed as exc:
        if speaks:
            print(f"qcompile: target missed: {exc}", file=sys.stderr)
        return 4
    except QCompileError as exc:
        if speaks:
            print(f"qcompile: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if speaks:
            print("qcompile: interrupted; no output was written partially", file=sys.stderr)
        return 130
    finally:
        if world is not None:
            world.close()


if __name__ == "__main__":
    sys.exit(main())
