"""The CUDA kernels run on the CPU: the same source built against a host emulation.

:func:`library` compiles ``emulation/kernels_host.cpp`` (which includes the
kernel sources unchanged, with ``emulation/cuda_host.h`` standing in for CUDA)
with the host C++ compiler into a shared library, cached by the sources'
hash, and loads it with ctypes. :func:`kernels` drives it through the same
entry points and launch shapes as the GPU build (:mod:`qcompile.kernels.device_ops`),
on CPU tensors: the tests run the GPU's code block by block and thread by
thread, with the grids a GPU gets. It is slow (one OS thread runs every CUDA
thread in turn).
"""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path

import torch
from qcompile.kernels.build import shared_library
from qcompile.kernels.device_ops import Kernels

HERE = Path(__file__).resolve().parent
SOURCES = (HERE / "gemmlowp.h", HERE / "gemmlowp_kernels.cuh", HERE / "qconv_kernels.cuh", HERE / "sm80_ops.cuh",
           HERE / "launchers.h", HERE / "entry_points.h", HERE / "emulation" / "cuda_host.h",
           HERE / "emulation" / "kernels_host.cpp")


@cache
def library() -> ctypes.CDLL:
    """The emulated kernels as a loaded shared library (built on first use)."""
    lib = shared_library(HERE / "emulation" / "kernels_host.cpp", SOURCES)
    i32, ptr = ctypes.c_int32, ctypes.c_void_p
    lib.qc_srdhm.restype = lib.qc_rdbpot.restype = lib.qc_output_stage.restype = i32
    lib.qc_srdhm.argtypes = [i32, i32]
    lib.qc_rdbpot.argtypes = [i32, ctypes.c_int]
    lib.qc_output_stage.argtypes = [i32, i32, i32, ctypes.c_int, i32, i32, i32]
    lib.qc_quantize.restype = i32
    lib.qc_quantize.argtypes = [ctypes.c_float, ctypes.c_float, i32, i32, i32]
    lib.qc_pack_int4.restype = ctypes.c_uint8
    lib.qc_pack_int4.argtypes = [i32, i32]
    lib.qc_unpack_int4.restype = i32
    lib.qc_unpack_int4.argtypes = [ctypes.c_uint8, ctypes.c_int]
    lib.qc_mma_s8_16832.argtypes = [ptr, ptr, ptr, ptr]
    return lib


@cache
def kernels() -> Kernels:
    """The ops of ``torch.ops.qcompile`` on the emulated kernels, for CPU tensors."""
    return Kernels(library(), lambda device: None, "the CUDA kernels' host emulation")


def mma_s8_16832(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """One emulated ``mma.sync.m16n8k32.s8`` by a warp: per-lane fragments in, per-lane results out.

    ``a``: ``[32, 4]`` int32 words (four int8 each), ``b``: ``[32, 2]``, ``c``: ``[32, 4]`` int32; returns ``d``
    ``[32, 4]`` int32, lane by lane as the instruction leaves it."""
    a, b, c = (t.to(torch.int32).contiguous() for t in (a, b, c))
    d = torch.empty(32, 4, dtype=torch.int32)
    library().qc_mma_s8_16832(a.data_ptr(), b.data_ptr(), c.data_ptr(), d.data_ptr())
    return d
