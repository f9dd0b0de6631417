"""The CLI under ``torchrun``: which process speaks, which writes, and which only computes.

``torchrun --nproc_per_node N -m qcompile MODEL ... -o OUT`` starts N copies
of the command. Every rank parses the same arguments, lowers the same model
and runs the same passes; the data-driven passes share out the data
(:mod:`qcompile.distributed`). Rank 0 alone prints, writes OUT and runs what
follows the pipeline (exports, checks, the verdict), on one process.
The other ranks print nothing (a failure on any of them reaches rank 0,
which reports it) and exit once the pipeline is done.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
from collections.abc import Sequence

from qcompile.distributed import World, single_process, world_from_environment

RUNS_PASSES = ("compile", "inspect")


def environment_rank() -> int:
    """This process's rank as torchrun gave it (0 outside torchrun), known before the group is joined."""
    try:
        return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else 0
    except ValueError:
        return 0


def parse_quietly(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; on ranks other than 0 a usage error exits without printing (rank 0 prints it)."""
    if environment_rank() == 0:
        return parser.parse_args(argv)
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        return parser.parse_args(argv)


def join_world(command: str) -> World:
    """The run's processes: joined for commands that run passes, one process for the others."""
    if command not in RUNS_PASSES:
        return single_process()
    return world_from_environment()
