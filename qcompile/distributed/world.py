"""The processes of one run: who this is, how to reach the others, and how they fail together.

A run started by ``torchrun --nproc_per_node N -m qcompile ...`` sees
``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in its
environment; :func:`world_from_environment` joins the process group they
describe. Without them (or with ``WORLD_SIZE=1``) the run is one process and
every collective below is the identity, so passes have one code path::

    world = ctx.world
    observer.reduce(world)              # min/max by all-reduce, histograms by sum, ...
    with world.together("calibrate"):   # a failure on any rank stops every rank
        ...

Collectives run on CPU tensors with the ``gloo`` backend. With
``QCOMPILE_DIST_BACKEND=nccl`` they are staged through the process's GPU
(``cuda:LOCAL_RANK``); qcompile's passes compute on the CPU either way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import torch

from qcompile.errors import QCompileError

BACKENDS = ("gloo", "nccl")


class AgreedFailure(QCompileError):
    """A failure every rank knows about: rank 0 reports it, the others stop quietly."""


class World:
    """This process's place among the run's processes.

    Attributes:
        rank: This process's index, 0 for the one that writes OUT.
        size: How many processes run.
        backend: The torch.distributed backend, or ``None`` for one process.
    """

    def __init__(self, rank: int = 0, size: int = 1, backend: str | None = None, device: str = "cpu"):
        self.rank = rank
        self.size = size
        self.backend = backend
        self.device = device
        self.finished = False  # every rank reached the end of the pipeline: they leave together

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints the run's messages."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size}, backend={self.backend})"

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``tensor`` combined over every rank (``sum``, ``min`` or ``max``); a new tensor."""
        if not self.distributed:
            return tensor.clone()
        import torch.distributed as dist

        ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
        staged = tensor.detach().to(self.device, copy=True).contiguous()
        dist.all_reduce(staged, op=ops[op])
        return staged.to(tensor.device)

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (any picklable object), in rank order."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.size
        dist.all_gather_object(gathered, value)
        return gathered

    def interleave(self, per_rank: Sequence[Sequence[Any]]) -> list[Any]:
        """Per-rank lists of per-batch records back in the order of the global batches.

        Batches are dealt round robin (:func:`qcompile.distributed.shards.my_batches`):
        rank ``r``'s ``j``-th batch is global batch ``j * size + r``.
        """
        merged = []
        for j in range(max((len(records) for records in per_rank), default=0)):
            merged += [records[j] for records in per_rank if j < len(records)]
        return merged

    @contextlib.contextmanager
    def together(self, step: str) -> Iterator[None]:
        """Run a rank-local step; if it fails on any rank, every rank raises :class:`AgreedFailure`.

        Put it around work that is followed by a collective, so that a rank
        that fails does not leave the others waiting in that collective.
        """
        if not self.distributed:
            yield
            return
        failure: str | None = None
        try:
            yield
        except AgreedFailure:
            raise  # every rank raised it at the same point
        except QCompileError as exc:
            failure = str(exc)
        except Exception as exc:  # noqa: BLE001 - any crash on one rank must reach the others
            failure = f"{type(exc).__name__}: {exc}"
        failures = [(rank, text) for rank, text in enumerate(self.all_gather(failure)) if text is not None]
        if failures:
            rank, text = failures[0]
            others = f" (and on {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise AgreedFailure(f"{step} failed on rank {rank} of {self.size}{others}: {text}")

    def close(self) -> None:
        """Leave the process group.

        After a finished pipeline every rank waits here for the others (rank 0
        still writes and checks), so that no process tears its connections
        down while a peer still holds them open. After a failure the ranks
        leave at once: a rank that failed alone must not wait for peers that
        are stuck elsewhere (torchrun stops them).
        """
        if not self.distributed:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            return
        if self.finished:
            with contextlib.suppress(RuntimeError):  # a peer that died is torchrun's to report
                dist.barrier()
        dist.destroy_process_group()


def data_parallel() -> bool:
    """Whether torch.distributed runs more than one process now (modules that sync in training ask this)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def single_process() -> World:
    """The world of a run in one process."""
    return World()


def world_from_environment() -> World:
    """Join the process group that ``torchrun`` describes in the environment, or run alone.

    Raises QCompileError when the environment is half set or the group
    cannot be formed.
    """
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return single_process()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise QCompileError(f"WORLD_SIZE={size} is set but {', '.join(missing)} is not",
                            hint="start the processes with torchrun --nproc_per_node N -m qcompile ...")
    rank = int(os.environ["RANK"])
    backend = os.environ.get("QCOMPILE_DIST_BACKEND", "gloo")
    if backend not in BACKENDS:
        raise QCompileError(f"QCOMPILE_DIST_BACKEND={backend!r} is not a backend qcompile runs on",
                            hint=f"use one of: {', '.join(BACKENDS)}")
    device = "cpu"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise QCompileError("QCOMPILE_DIST_BACKEND=nccl needs a GPU per process, and torch sees none",
                                hint="use the gloo backend (the default) on CPUs")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    minutes = float(os.environ.get("QCOMPILE_DIST_TIMEOUT_MIN", "60"))
    import torch.distributed as dist

    try:
        dist.init_process_group(backend, rank=rank, world_size=size, timeout=timedelta(minutes=minutes))
    except (RuntimeError, ValueError) as exc:
        raise QCompileError(f"cannot join the process group (rank {rank} of {size}, {backend}): {exc}",
                            hint="check MASTER_ADDR / MASTER_PORT, or start with torchrun") from None
    return World(rank, size, backend, device)
