"""The CUDA kernels as the GPU implementation of ``torch.ops.qcompile.*``.

Importing :mod:`qcompile.kernels` registers a CUDA kernel for every op
(:func:`register`; nothing is built then), so an emitted gemmlowp model runs on
a GPU the way any PyTorch model does::

    model = load("weights.pt").to("cuda")
    y = model(x.cuda())

The first call on a CUDA tensor builds the kernels with ``nvcc`` into a shared
library (``gemmlowp_launch.cu`` and the headers it includes; for sm_80, sm_90
and as compute_80 PTX for later GPUs), cached by the sources' hash next to the
host kernels, and loads it with ctypes; every later call launches on torch's
current stream, with no copy to the host. Without ``nvcc`` that first call
fails with :class:`CudaUnavailable` naming what is missing; there is no silent
CPU fallback. :func:`load` does the build and checks for a GPU up front.

``python -m qcompile.kernels.cuda_cli --coverage`` lists the ops and their
CUDA kernels; ``--build`` builds the library and prints where it is.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import torch
from qcompile.kernels.build import cache_dir
from qcompile.kernels.device_ops import Kernels

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "gemmlowp_launch.cu"
HEADERS = (HERE / "gemmlowp.h", HERE / "gemmlowp_kernels.cuh", HERE / "qconv_kernels.cuh", HERE / "sm80_ops.cuh",
           HERE / "launchers.h", HERE / "entry_points.h")
# machine code for Ampere (sm_80) and Hopper (sm_90), PTX that later GPUs compile when they load it
GENCODE = ("arch=compute_80,code=sm_80", "arch=compute_90,code=sm_90", "arch=compute_80,code=compute_80")


class CudaUnavailable(RuntimeError):
    """What a GPU run of the kernels needs and this machine lacks (a GPU, nvcc)."""


def nvcc() -> str:
    """The CUDA compiler: ``$CUDA_HOME/bin/nvcc``, else ``nvcc`` on the PATH, else ``/usr/local/cuda/bin/nvcc``."""
    candidates = [Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"] if os.environ.get("CUDA_HOME") else []
    found = shutil.which("nvcc")
    candidates += [Path(found)] if found else []
    candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise CudaUnavailable("qcompile's CUDA kernels are built on first use with nvcc, and no nvcc was found "
                          "(CUDA_HOME unset or without bin/nvcc, none on the PATH or in /usr/local/cuda): install "
                          f"the CUDA toolkit (CUDA {torch.version.cuda or '12 or later'}, as torch) or set "
                          "CUDA_HOME to it")


def compile_command(output: Path, *, shared: bool = True, extra: tuple[str, ...] = ()) -> list[str]:
    """The nvcc command that builds the kernels into ``output`` (a shared library, or an object file)."""
    gencode = [flag for arch in GENCODE for flag in ("-gencode", arch)]
    kind = ["-shared", "-Xcompiler", "-fPIC"] if shared else ["-c"]
    return [nvcc(), "-std=c++17", "-O3", "-Werror", "all-warnings", *gencode, *kind, *extra, "-o", str(output),
            str(SOURCE)]


def build(verbose: bool = False) -> Path:
    """Compile the kernels unless a build of the same sources is cached; return the library's path."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in (SOURCE, *HEADERS)) + " ".join(GENCODE).encode())
    target = cache_dir() / f"qcompile_cuda_{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    command = compile_command(partial)
    if verbose:
        print(" ".join(command), file=sys.stderr)
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        raise CudaUnavailable(f"building qcompile's CUDA kernels failed:\n{' '.join(command)}\n{run.stderr}")
    partial.replace(target)  # atomic: a concurrent or interrupted build never leaves half a library
    return target


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


@cache
def kernels() -> Kernels:
    """The ops on the GPU build of the kernels (built on first use)."""
    return Kernels(ctypes.CDLL(str(build())), _stream, "qcompile's CUDA kernels")


def load(verbose: bool = False) -> Kernels:
    """Check for a GPU, build the kernels (cached) and return them; the ops are registered already."""
    if not torch.cuda.is_available():
        raise CudaUnavailable(f"no CUDA GPU is visible to torch (torch {torch.__version__}, built with CUDA "
                              f"{torch.version.cuda}): torch.cuda.is_available() is False. Run the model on the CPU "
                              "(the gemmlowp backend's CPU kernels compute the same codes) or on a machine with an "
                              "NVIDIA GPU (sm_80 or later) and its driver")
    if verbose:
        print(f"qcompile CUDA kernels: {build(verbose=True)}", file=sys.stderr)
    return kernels()


# ------------------------------------------------------------------ the ops' CUDA kernels


def _on_gpu(name: str):
    """Op ``name``'s CUDA kernel: the method of :func:`kernels` that takes the op's arguments."""

    def kernel(*args):
        return getattr(kernels(), name)(*args)

    return kernel


CUDA_KERNELS = {name: _on_gpu(name) for name in ("qconv2d", "qlinear", "quantize", "dequantize", "qadd", "qmul",
                                                "requantize_codes", "max_pool2d", "avg_pool2d", "global_avg_pool")}


@cache
def register() -> None:
    """Register :data:`CUDA_KERNELS` as the ops' CUDA kernels (once; builds nothing)."""
    from qcompile.kernels.ops import _LIBRARY

    for name, function in CUDA_KERNELS.items():
        _LIBRARY.impl(name, function, "CUDA")


def coverage() -> dict[str, bool]:
    """Every ``torch.ops.qcompile`` op, and whether it has a CUDA kernel registered."""
    from qcompile.kernels.ops import defined_ops

    return {name: torch._C._dispatch_has_kernel_for_dispatch_key(f"qcompile::{name}", "CUDA")
            for name in defined_ops()}
