"""The CUDA kernels as the GPU implementation of ``torch.ops.qcompile.*``.

On a machine with a GPU, :func:`load` builds ``torch_cuda.cpp`` and
``gemmlowp_launch.cu`` with ``torch.utils.cpp_extension`` and registers them
for CUDA tensors: convolutions run as im2col + the dp4a GEMM, linear layers
as the GEMM, quantize / dequantize as their kernels. ``qadd`` has no CUDA
kernel of its own; its twin (torch integer ops) runs on the GPU as it is.
Without a GPU nothing is built and the CPU twin serves every call; the
kernels' code is still compiled for sm_80 / sm_90 and executed in the host
emulation by the tests.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch
from qcompile.kernels.geometry import conv_output_size

HERE = Path(__file__).resolve().parent


def _toolkit() -> str:
    """The CUDA toolkit's root (``CUDA_HOME``, else the one holding ``nvcc``'s real binary)."""
    import os
    import shutil

    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").exists() and (Path(root) / "include" / "cuda_runtime.h").exists():
            return root
    nvcc = shutil.which("nvcc")
    raise RuntimeError(f"no CUDA toolkit found (nvcc: {nvcc}); set CUDA_HOME to the directory with bin/nvcc "
                       "and include/cuda_runtime.h")


@cache
def build(arches: tuple[str, ...] = ("8.0", "9.0"), verbose: bool = False):
    """Compile the extension (no GPU needed to build it) and return the loaded module."""
    import os

    import torch.utils.cpp_extension as cpp_extension

    cpp_extension.CUDA_HOME = _toolkit()  # found once at import, possibly from a wrapper script
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", ";".join(arches))
    return cpp_extension.load("qcompile_gemmlowp_cuda", [str(HERE / "torch_cuda.cpp"), str(HERE / "gemmlowp_launch.cu")],
                              extra_include_paths=[str(HERE)], verbose=verbose)


@cache
def load(verbose: bool = False):
    """Build the extension and register the CUDA kernels; returns it (None without a GPU)."""
    if not torch.cuda.is_available():
        return None
    extension = build(verbose=verbose)
    _register(extension)
    return extension


def _register(ext) -> None:
    @torch.library.register_kernel("qcompile::qconv2d", "cuda")
    def _qconv2d(x, x_zero, weight, bias, multiplier, exponent, out_zero, lo, hi, stride, padding, dilation,
                 groups):
        kh, kw = weight.shape[2:]
        oh = conv_output_size(x.shape[2], kh, stride[0], padding[0], dilation[0])
        ow = conv_output_size(x.shape[3], kw, stride[1], padding[1], dilation[1])
        columns = ext.im2col(x.contiguous(), groups, kh, kw, *stride, *padding, *dilation, oh, ow, x_zero)
        out = ext.qgemm(columns, weight.reshape(weight.shape[0], -1).contiguous(), bias, multiplier, exponent,
                        x_zero, out_zero, lo, hi, oh * ow)
        # the op's contract on every device (kernels/ops.py): channels-last memory order
        return out.reshape(x.shape[0], weight.shape[0], oh, ow).contiguous(memory_format=torch.channels_last)

    @torch.library.register_kernel("qcompile::qlinear", "cuda")
    def _qlinear(x, x_zero, weight, bias, multiplier, exponent, out_zero, lo, hi):
        rows = x.reshape(1, -1, x.shape[-1]).contiguous()
        out = ext.qgemm(rows, weight.contiguous(), bias, multiplier, exponent, x_zero, out_zero, lo, hi, 1)
        return out.reshape(*x.shape[:-1], weight.shape[0])

    @torch.library.register_kernel("qcompile::quantize", "cuda")
    def _quantize(x, scale, zero_point, qmin, qmax):
        return ext.quantize(x.float().contiguous(), scale.float().reshape(1), zero_point.int().reshape(1), 1, 1,
                            qmin, qmax)

    @torch.library.register_kernel("qcompile::dequantize", "cuda")
    def _dequantize(q, scale, zero_point):
        return ext.dequantize(q.contiguous(), scale.float().reshape(1), zero_point.int().reshape(1), 1, 1)
