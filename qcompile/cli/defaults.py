"""What the command does when not told: the recommended pipeline, and the exit statuses it documents."""

from __future__ import annotations

import argparse
import sys

from qcompile.errors import QCompileError

EXIT_STATUS = ("Exit status: 0 success; 2 a user error (`qcompile: error: ...` with a hint; nothing written, OUT "
               "left as it was); 3 the ONNX --check found the export disagreeing with the emitted model (files "
               "written); 4 no pipeline met --target-agreement / --target-sqnr (nothing written, or the closest "
               "with --write-best); 130 interrupted (nothing written); 1 an internal error (a bug in qcompile: please "
               "report it with the command line). No colour is ever written, so NO_COLOR needs nothing.")
# what `qcompile MODEL --calib DATA -o OUT` runs when --passes is left out
RECOMMENDED_PIPELINE = "ptq"


def recommended_passes(args: argparse.Namespace) -> str:
    """The pipeline of a compile without --passes: the recommended static quantization, said so."""
    from qcompile.pipeline import named_pipelines

    text = named_pipelines()[RECOMMENDED_PIPELINE][0]
    if args.calib is None:
        raise QCompileError(f"without --passes, qcompile runs the recommended static quantization "
                            f"({RECOMMENDED_PIPELINE}: {text}), which calibrates on data, and no --calib was given",
                            hint="pass --calib DATA (e.g. --calib builtin:photos for an ImageNet model), or "
                            "--passes fuse for a float model")
    print(f"qcompile: no --passes given: running the recommended static quantization, {RECOMMENDED_PIPELINE} "
          f"({text}); --passes fuse keeps the model float", file=sys.stderr)
    return RECOMMENDED_PIPELINE
