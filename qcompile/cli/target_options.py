"""``--target-agreement`` / ``--target-sqnr``: the accuracy target a compile searches for, and its data."""

from __future__ import annotations

import argparse
import sys

from qcompile.cli.argtypes import finite_float, fraction
from qcompile.distributed import World
from qcompile.errors import QCompileError


def add_target_arguments(compile_p: argparse.ArgumentParser) -> None:
    compile_p.add_argument("--target-agreement", type=fraction, metavar="A",
                           help="search for the cheapest pipeline whose top-1 agreement with float reaches A on "
                           "the verdict's held-out samples: yours first, then equalization, bias correction, "
                           "learned rounding; exit 4 without writing if none does")
    compile_p.add_argument("--target-sqnr", type=finite_float, metavar="DB",
                           help="likewise for the output SQNR against float (with --target-agreement: both)")
    compile_p.add_argument("--write-best", action="store_true",
                           help="with a target that no pipeline meets, write the closest anyway (still exit 4)")


def accuracy_target(options, world: World, instruments: list):
    """The accuracy target of --target-agreement / --target-sqnr, and the held-out inputs it is scored on."""
    from qcompile.target_search import Target

    args = options.args
    if args.target_agreement is None and args.target_sqnr is None:
        if args.write_best:
            raise QCompileError("--write-best goes with an accuracy target",
                                hint="add --target-agreement A or --target-sqnr DB")
        return None, None
    if args.calib is None:
        raise QCompileError("an accuracy target needs calibration data", hint="pass --calib DATA")
    if instruments or args.modes or world.size > 1:
        raise QCompileError("an accuracy target runs several pipelines; diagnostics, --timing, --print-after, "
                            "--dump-dir, --modes and torchrun follow one",
                            hint="search first, then run the chosen pipeline (printed) again with them")
    data = options.verdict_data  # the verdict scores the same samples
    target = Target(args.target_agreement, args.target_sqnr)
    seen = "" if data.held_out else " (calibration saw them: pass --check-data for held-out ones)"
    print(f"qcompile: target: {target.describe()} on {data.description}{seen}", file=sys.stderr)
    return target, [inputs for inputs, _ in data.batches]
