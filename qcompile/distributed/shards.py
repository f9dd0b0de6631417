"""Which samples each process works on.

Calibration deals whole batches round robin: with 2 processes, rank 0 runs
global batches 0, 2, 4, ... and rank 1 batches 1, 3, 5, ...; every batch holds
the samples that one process would batch together, so per-batch statistics
match one process exactly. Training splits each global batch into one
contiguous slice per rank (data parallel: the ranks' gradients average to the
global batch's). A few samples (bias correction) are split the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from qcompile.data import DataSource
from qcompile.distributed.world import World
from qcompile.errors import QCompileError


def my_batches(data: Iterable, world: World, max_batches: int = 0) -> Iterator[tuple[int, tuple]]:
    """This rank's calibration batches of ``data`` (the first ``max_batches`` global ones, 0: all), each with
    its index among the global batches.

    A :class:`DataSource` loads only this rank's samples; other iterables are
    read whole and filtered.
    """
    total = len(data) if hasattr(data, "__len__") else None
    if max_batches and total is not None:
        total = min(total, max_batches)
    if world.distributed and total is not None and total < world.size:
        raise QCompileError(f"the calibration data makes {total} batch{'es' if total != 1 else ''} for "
                            f"{world.size} processes; each process needs at least one",
                            hint="use more samples, a smaller --batch-size, or fewer processes")
    if isinstance(data, DataSource) and world.distributed:
        mine = ((j * world.size + world.rank, batch) for j, batch in enumerate(data.shard(world.rank, world.size)))
    else:
        mine = ((index, batch) for index, batch in enumerate(data) if index % world.size == world.rank)
    for index, batch in mine:
        if max_batches and index >= max_batches:
            return
        yield index, batch


def my_batch_count(data: Iterable, world: World, max_batches: int = 0) -> int | None:
    """How many batches :func:`my_batches` yields on this rank, when ``data`` knows its length."""
    if not hasattr(data, "__len__"):
        return None
    total = min(len(data), max_batches) if max_batches else len(data)
    return len(range(world.rank, total, world.size))


def my_slice(count: int, world: World) -> slice:
    """This rank's contiguous part of ``count`` samples (sizes differ by at most one)."""
    base, extra = divmod(count, world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (world.rank < extra))


def my_samples(tensors: tuple[torch.Tensor, ...], world: World) -> tuple[torch.Tensor, ...]:
    """This rank's contiguous part of a batch given as one tensor per model input."""
    if len(tensors[0]) < world.size:
        raise QCompileError(f"{len(tensors[0])} samples cannot be split over {world.size} processes",
                            hint="give more calibration samples, or use fewer processes")
    part = my_slice(len(tensors[0]), world)
    return tuple(t[part] for t in tensors)


def training_batches(data: DataSource, world: World) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """``(x, y, global batch size)``: this rank's slice of each global batch of labelled ``data``."""
    count, size = len(data.items), data.batch_size
    last = count % size or size
    if world.distributed and min(last, size) < world.size:
        raise QCompileError(f"a training batch of {min(last, size)} samples cannot be split over {world.size} "
                            "processes", hint="use a --batch-size and --train-samples that give every "
                            "process at least one sample of each batch")
    for start in range(0, count, size):
        stop = min(start + size, count)
        part = my_slice(stop - start, world)
        lo, hi = start + part.start, start + part.stop
        yield data.load_samples(lo, hi), data.labels[lo:hi], stop - start
