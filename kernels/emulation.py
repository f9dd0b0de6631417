"""The CUDA kernels run on the CPU: ``gemmlowp_kernels.cuh`` built against a host emulation.

:func:`library` compiles ``emulation/kernels_host.cpp`` (which includes the
kernel source unchanged) with the host C++ compiler into a shared library,
cached by the sources' hash, and loads it with ctypes. The wrappers take and
return torch tensors and launch the kernels with the same grid and block
shapes as the GPU launchers in ``gemmlowp_launch.cu``. This is for testing
the kernels' own code, block by block and thread by thread; it is slow.
"""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path

import torch
from qcompile.kernels.build import shared_library
from qcompile.kernels.geometry import conv_output_size

HERE = Path(__file__).resolve().parent
SOURCES = (HERE / "gemmlowp.h", HERE / "gemmlowp_kernels.cuh", HERE / "emulation" / "cuda_host.h",
           HERE / "emulation" / "kernels_host.cpp")


@cache
def library() -> ctypes.CDLL:
    """The emulated kernels as a loaded shared library (built on first use)."""
    lib = shared_library(HERE / "emulation" / "kernels_host.cpp", SOURCES)
    i32, i64, ptr = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p
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
    lib.qc_qgemm.argtypes = [ptr] * 7 + [ctypes.c_int] * 10
    lib.qc_im2col.argtypes = [ptr, ptr] + [ctypes.c_int] * 16
    lib.qc_quantize_u8.argtypes = [ptr, ptr, i64, ptr, ptr, ctypes.c_int, i64, ctypes.c_int, ctypes.c_int]
    lib.qc_dequantize_u8.argtypes = [ptr, ptr, i64, ptr, ptr, ctypes.c_int, i64]
    return lib


def _ptr(t: torch.Tensor) -> int:
    assert t.is_contiguous() and t.device.type == "cpu"
    return t.data_ptr()


def qgemm(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, m0: torch.Tensor, exponent: torch.Tensor,
          a_zero: int, out_zero: int, lo: int, hi: int, groups: int = 1, spatial: int = 1) -> torch.Tensor:
    """Run ``qgemm_dp4a``: ``a`` is ``[groups, rows, depth]`` uint8, ``w`` ``[channels, depth]`` int8.

    The result is ``[rows // spatial, channels, spatial]`` uint8 (NCHW-flat for
    convolutions, ``[rows, channels]`` for ``spatial=1``).
    """
    a, w = a.contiguous(), w.contiguous()
    groups_, rows, depth = a.shape
    assert groups_ == groups and w.shape[1] == depth and rows % spatial == 0
    channels = w.shape[0]
    weight_sums = w.to(torch.int32).sum(dim=1).to(torch.int32).contiguous()
    ints = [t.to(torch.int32).contiguous() for t in (bias, m0, exponent)]
    out = torch.zeros(rows // spatial, channels, spatial, dtype=torch.uint8)
    library().qc_qgemm(_ptr(a), _ptr(w), _ptr(weight_sums), *map(_ptr, ints), _ptr(out), groups, rows,
                       channels // groups, depth, a_zero, out_zero, lo, hi, spatial, channels)
    return out


def im2col(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
           dilation: tuple[int, int], groups: int, zero_point: int) -> tuple[torch.Tensor, int, int]:
    """Run ``im2col_u8`` on NCHW uint8 ``x``: ``([groups, N*OH*OW, C/groups*KH*KW], OH, OW)``."""
    x = x.contiguous()
    n, c, h, w = x.shape
    oh = conv_output_size(h, kernel[0], stride[0], padding[0], dilation[0])
    ow = conv_output_size(w, kernel[1], stride[1], padding[1], dilation[1])
    columns = torch.empty(groups, n * oh * ow, c // groups * kernel[0] * kernel[1], dtype=torch.uint8)
    library().qc_im2col(_ptr(x), _ptr(columns), n, c, h, w, groups, *kernel, *stride, *padding, *dilation, oh, ow,
                        zero_point)
    return columns, oh, ow


def qconv2d(x, w, bias, m0, exponent, a_zero, out_zero, lo, hi, stride, padding, dilation, groups):
    """A convolution the way the GPU runs it: im2col, then the grouped GEMM."""
    columns, oh, ow = im2col(x, tuple(w.shape[2:]), stride, padding, dilation, groups, a_zero)
    out = qgemm(columns, w.reshape(w.shape[0], -1), bias, m0, exponent, a_zero, out_zero, lo, hi, groups, oh * ow)
    return out.reshape(x.shape[0], w.shape[0], oh, ow)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None,
             qmin: int = 0, qmax: int = 255) -> torch.Tensor:
    x = x.float().contiguous()
    channels = x.shape[axis] if axis is not None else 1
    inner = int(torch.tensor(x.shape[axis + 1:]).prod()) if axis is not None else 1
    scale, zero_point = scale.float().reshape(-1).contiguous(), zero_point.to(torch.int32).reshape(-1).contiguous()
    q = torch.empty(x.shape, dtype=torch.uint8)
    library().qc_quantize_u8(_ptr(x), _ptr(q), x.numel(), _ptr(scale), _ptr(zero_point), channels, inner, qmin, qmax)
    return q


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None) -> torch.Tensor:
    q = q.contiguous()
    channels = q.shape[axis] if axis is not None else 1
    inner = int(torch.tensor(q.shape[axis + 1:]).prod()) if axis is not None else 1
    scale, zero_point = scale.float().reshape(-1).contiguous(), zero_point.to(torch.int32).reshape(-1).contiguous()
    x = torch.empty(q.shape, dtype=torch.float32)
    library().qc_dequantize_u8(_ptr(q), _ptr(x), q.numel(), _ptr(scale), _ptr(zero_point), channels, inner)
    return x
