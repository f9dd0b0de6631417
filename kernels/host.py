"""The CPU twin's element-wise stages built from ``gemmlowp.h`` itself (``host_kernels.cpp``).

The output stage and the quantized add run once per element; as torch ops
they take a dozen passes over every activation. Compiled from the same
header as the CUDA kernels, they take one, and cannot drift from the GPU's
arithmetic. When a bound on the accumulators rules out every saturation (the
twin knows one: ``depth * 255 * 128``), the output stage runs eight lanes at
a time with AVX2, straight from the float32 accumulators of the convolution:
along rows of one channel (NCHW), or one channel per lane (channels-last
convolutions, linear layers), always writing NCHW. The add does the same
whenever all its exponents shift right; on AVX-512 CPUs it gathers its codes
from a table of its 65,536 outputs instead, written once per setting by
that arithmetic. The library is built with the host
C++ compiler on first use and cached (:mod:`qcompile.kernels.build`).
Without a compiler, or with ``QCOMPILE_HOST_KERNELS=0``, the twin uses the
torch-op version in :mod:`qcompile.kernels.fixed_point` (bit-exact with
this, tested).
"""

from __future__ import annotations

import ctypes
import os
import warnings
from functools import cache, lru_cache

import torch
from qcompile.kernels.build import HERE, shared_library


@cache
def _library() -> ctypes.CDLL | None:
    try:
        lib = shared_library(HERE / "host_kernels.cpp",
                             tuple(HERE / h for h in ("gemmlowp.h", "parallel.h", "stage8.h", "stage16.h")),
                             flags=("-O3",), also=(HERE / "host_layout.cpp", HERE / "host_plan.cpp"))
    except RuntimeError as exc:
        warnings.warn(f"qcompile: {str(exc).splitlines()[0]}; the gemmlowp CPU twin uses torch ops (slower)",
                      stacklevel=2)
        return None
    i32, i64, ptr, int_ = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.qc_host_vector_form.argtypes = [i64] + [ptr] * 3 + [i64]
    lib.qc_host_vector_form.restype = int_
    lib.qc_host_output_stage.argtypes = [ptr] * 5 + [i64] * 3 + [i32] * 3 + [int_]
    for eight_lanes in (lib.qc_host_output_stage_rows8, lib.qc_host_output_stage_channels_last):
        eight_lanes.argtypes = [ptr, int_] + [ptr] * 4 + [i64] * 3 + [i32] * 3 + [int_]
    lib.qc_host_add.argtypes = [ptr] * 3 + [i64] + [i32, i32, int_] * 2 + [i32, int_] + [i32] * 3 + [int_] * 3
    lib.qc_host_add.restype = int_
    lib.qc_host_add_lookup.argtypes = [ptr] * 3 + [i64, ptr, int_]
    lib.qc_host_add_lookup.restype = int_
    lib.qc_host_quantize.argtypes = [ptr, ptr, i64, ctypes.c_float, i32, i32, i32, int_]
    lib.qc_host_dequantize.argtypes = [ptr, ptr, i64, ctypes.c_float, i32, int_]
    lib.qc_host_max_pool.argtypes = [ptr, ptr, ptr, int_]
    lib.qc_host_to_channels_last.argtypes = [ptr, ptr, i64, i64, i64, int_]
    lib.qc_host_mean_pixels.argtypes = [ptr, ptr, i64, i64, i64, int_]
    lib.qc_plan_run.argtypes = [ptr, i64, ptr, ptr]
    lib.qc_plan_run.restype = i64
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded host kernels, or None (no compiler, or switched off by QCOMPILE_HOST_KERNELS=0)."""
    if os.environ.get("QCOMPILE_HOST_KERNELS", "1") == "0":
        return None
    return _library()


def memory_order(t: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a 4-d tensor stored in that order (and not also in NCHW order), else
    ``torch.contiguous_format``: the order an element-wise kernel keeps."""
    channels_last = t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def int32_params(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Per-channel parameters as the kernels read them: contiguous int32 (the tensors themselves when they are)."""
    return [t if t.dtype == torch.int32 and t.is_contiguous() else t.to(torch.int32).contiguous() for t in tensors]


def run_output_stage(acc: torch.Tensor, bias: torch.Tensor, m0: torch.Tensor, exponent: torch.Tensor,
                     zero_point: int, lo: int, hi: int, axis: int,
                     acc_bound: int | None = None) -> tuple[torch.Tensor, bool]:
    """:func:`output_stage`, and whether its eight-lane (AVX2) form ran."""
    lib = library()
    params = int32_params(bias, m0, exponent)
    pointers = [t.data_ptr() for t in params]
    channels = acc.shape[axis]
    vector = (acc_bound is not None and acc.dtype in (torch.int32, torch.float32)
              and bool(lib.qc_host_vector_form(acc_bound, *pointers, channels)))
    out = torch.empty(acc.shape, dtype=torch.uint8)
    tail = (zero_point, lo, hi, torch.get_num_threads())
    if not vector:
        acc = acc.to(torch.int32).contiguous()
        lib.qc_host_output_stage(acc.data_ptr(), *pointers, out.data_ptr(), *_rows(acc, axis), *tail)
        return out, False
    is_float = int(acc.dtype == torch.float32)
    channels_last = axis == 1 and memory_order(acc) == torch.channels_last
    if channels_last or (axis == acc.dim() - 1 and acc.is_contiguous()):
        # channels innermost (a channels-last convolution, or a linear layer): one channel per lane
        pixels = acc.shape[2] * acc.shape[3] if channels_last else 1
        lib.qc_host_output_stage_channels_last(acc.data_ptr(), is_float, *pointers, out.data_ptr(),
                                               acc.numel() // (channels * pixels), pixels, channels, *tail)
    else:
        acc = acc.contiguous()
        lib.qc_host_output_stage_rows8(acc.data_ptr(), is_float, *pointers, out.data_ptr(), *_rows(acc, axis), *tail)
    return out, True


def _rows(acc: torch.Tensor, axis: int) -> tuple[int, int, int]:
    """(outer, channels, inner): ``acc`` as rows of one channel each."""
    channels = acc.shape[axis]
    inner = 1
    for size in acc.shape[axis + 1:]:
        inner *= size
    return (acc.numel() // (channels * inner) if acc.numel() else 0), channels, inner


def output_stage(acc: torch.Tensor, bias: torch.Tensor, m0: torch.Tensor, exponent: torch.Tensor, zero_point: int,
                 lo: int, hi: int, axis: int, acc_bound: int | None = None) -> torch.Tensor:
    """uint8 ``output_stage(acc)`` with per-channel parameters along ``axis`` (1 for NCHW, last for linear).

    ``acc`` holds integers (int32, or exactly in float32 / float64). With
    ``acc_bound`` (a bound on ``|acc|``) small enough that nothing can
    saturate, an AVX2 CPU runs the eight-lane form straight from int32 or
    float32 accumulators; otherwise the scalar form runs, from int32.
    """
    return run_output_stage(acc, bias, m0, exponent, zero_point, lo, hi, axis, acc_bound)[0]


def run_add(a: torch.Tensor, a_zero: int, a_m0: int, a_exponent: int, b: torch.Tensor, b_zero: int, b_m0: int,
            b_exponent: int, out_m0: int, out_exponent: int, out_zero: int, lo: int, hi: int,
            left_shift: int, wide: bool = True, lookup: bool = True) -> tuple[torch.Tensor, int]:
    """:func:`add`, and which form ran: 3 a table of its 65,536 outputs, gathered sixteen codes at a time
    (AVX-512; ``lookup=False`` keeps it off), 2 the sixteen-lane arithmetic (AVX-512), 1 the eight-lane one
    (AVX2), 0 the scalar one; ``wide=False`` keeps both AVX-512 forms off."""
    # element-wise: the inputs' memory order is kept when both share it (the twin's convolutions write
    # channels last)
    layout = memory_order(a)
    if not (a.shape == b.shape and a.dtype == b.dtype == torch.uint8 and b.is_contiguous(memory_format=layout)
            and a.is_contiguous(memory_format=layout)):  # else as the kernel reads them (a model's adds are)
        a, b = torch.broadcast_tensors(a, b)
        layout = memory_order(a)
        a, b = (t.to(torch.uint8).contiguous(memory_format=layout) for t in (a, b))
    out = torch.empty_like(a)
    settings = (a_zero, a_m0, a_exponent, b_zero, b_m0, b_exponent, out_m0, out_exponent, out_zero, lo, hi,
                left_shift)
    entry, after, _ = _add_entry(a.numel(), settings, lookup and wide, wide)
    return out, entry(a.data_ptr(), b.data_ptr(), out.data_ptr(), *after)


def _add_entry(count: int, settings: tuple[int, ...], lookup: bool = True, wide: bool = True):
    """An add's kernel for ``count`` codes: ``qc_host_add_lookup`` and its table where the CPU has AVX-512 (and
    ``lookup``), else ``qc_host_add``; the entry point, its arguments after the three pointers (a, b, out), and
    the table they point into (or None)."""
    lib, threads = library(), torch.get_num_threads()
    if lookup and _has_avx512():
        table = _add_table(*settings)
        return lib.qc_host_add_lookup, (count, table.data_ptr(), threads), table
    return lib.qc_host_add, (count, *settings, threads, int(wide)), None


class AddCall:
    """One add's kernel call on dense inputs of one shape and memory order, made once (a module keeps it): the
    entry point and its arguments but for the three pointers; it holds the table they point into."""

    __slots__ = ("out_shape", "out_strides", "entry", "after", "held")
    out_dtype = torch.uint8

    def __init__(self, a: torch.Tensor, settings: tuple[int, ...]):
        self.out_shape, self.out_strides = a.shape, a.stride()
        self.entry, self.after, self.held = _add_entry(a.numel(), settings)

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a + b``; both uint8 and laid out as the input the call was made for."""
        out = torch.empty_strided(self.out_shape, self.out_strides, dtype=torch.uint8)
        self.entry(a.data_ptr(), b.data_ptr(), out.data_ptr(), *self.after)
        return out


@cache
def _has_avx512() -> bool:
    from qcompile.cpu_features import cpu_flags

    return "avx512f" in cpu_flags()


@lru_cache(maxsize=64)
def _add_table(*settings: int) -> torch.Tensor:
    """The add's output for every pair of codes, at ``a * 256 + b``, and three bytes that the sixteen-code
    gather reads past the last: 64 KiB, written by the add's own arithmetic (so the same codes) once per setting."""
    pairs = torch.arange(1 << 16, dtype=torch.int32)
    a, b = (pairs >> 8).to(torch.uint8), (pairs & 255).to(torch.uint8)
    table = torch.zeros((1 << 16) + 3, dtype=torch.uint8)
    library().qc_host_add(a.data_ptr(), b.data_ptr(), table.data_ptr(), 1 << 16, *settings, 1, 1)
    return table


def add(a: torch.Tensor, a_zero: int, a_m0: int, a_exponent: int, b: torch.Tensor, b_zero: int, b_m0: int,
        b_exponent: int, out_m0: int, out_exponent: int, out_zero: int, lo: int, hi: int,
        left_shift: int) -> torch.Tensor:
    """TFLite's quantized add of two uint8 tensors (broadcast), as ``qc_host_add`` computes it."""
    return run_add(a, a_zero, a_m0, a_exponent, b, b_zero, b_m0, b_exponent, out_m0, out_exponent, out_zero, lo,
                   hi, left_shift)[0]


def quantize(x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    """uint8 ``round(clamp(zp + x / scale, qmin, qmax))`` of float32 ``x`` on one grid, as ``qc::quantize``.

    The output keeps ``x``'s memory order (NCHW or channels last)."""
    x = x.to(torch.float32).contiguous(memory_format=memory_order(x))
    return QuantizeCall(x.shape, x.stride(), scale, zero_point, qmin, qmax)(x)


def dequantize(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """float32 ``scale * (q - zp)`` of uint8 ``q`` on one grid, as ``qc::dequantize``, in ``q``'s memory order."""
    q = q.contiguous(memory_format=memory_order(q))
    return DequantizeCall(q.shape, q.stride(), scale, zero_point)(q)


def max_pool2d(q: torch.Tensor, out_shape: tuple[int, int, int, int], kernel_size: list[int], stride: list[int],
               padding: list[int], dilation: list[int]) -> torch.Tensor:
    """Max pooling of uint8 codes (N, C, H, W) to ``out_shape``, in channels-last order (as torch's, which
    refuses uint8 tensors in that order)."""
    q = channels_last(q)  # held: the kernel reads it through a raw pointer
    return PoolCall(q.shape, out_shape, kernel_size, stride, padding, dilation)(q)


class KernelCall:
    """One kernel call on inputs of one shape and layout, made once: the output's shape and layout (a memory
    format, or its strides), the entry point and its arguments before and after the input's and the output's
    pointers; it holds the tensors the arguments point into. The base of a layer's call (``host_conv._Call``)
    and of each host kernel's call below."""

    __slots__ = ("out_shape", "out_strides", "entry", "before", "after", "held")
    out_dtype = torch.uint8  # the output's (a class's, not a call's)

    def __init__(self, out_shape, layout, entry, before, after, held):
        # the output's strides, once: torch.empty_strided takes 1.0 us a call, torch.empty with a memory format 1.6
        self.out_shape, self.entry = tuple(out_shape), entry
        self.out_strides = tuple(layout) if isinstance(layout, tuple) else torch.empty(
            out_shape, dtype=torch.uint8, memory_format=layout, device="meta").stride()  # no memory
        self.before, self.after, self.held = before, after, held

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The call on ``x`` (of the shape, dtype and layout the call was made for)."""
        out = torch.empty_strided(self.out_shape, self.out_strides, dtype=self.out_dtype)
        self.entry(x.data_ptr(), *self.before, out.data_ptr(), *self.after)
        return out


class PoolCall(KernelCall):
    """One max pooling's kernel call on channels-last uint8 inputs of one shape (a module keeps it); it holds
    the shape its arguments point into."""

    __slots__ = ()

    def __init__(self, shape: torch.Size, out_shape: tuple[int, int, int, int], kernel_size: list[int],
                 stride: list[int], padding: list[int], dilation: list[int]):
        n, c, h, w = shape
        dims = torch.tensor((n, h, w, c, *out_shape[2:], *kernel_size, *stride, *padding, *dilation),
                            dtype=torch.int64)
        super().__init__(out_shape, torch.channels_last, library().qc_host_max_pool, (),
                         (dims.data_ptr(), torch.get_num_threads()), dims)


def channels_last(q: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) codes in channels-last order: ``q`` itself when it is, else a copy made here.

    torch's own copy would run on its threads, which then wait spinning for
    their next op on the cores the host kernels need next (with two cores,
    measured: MobileNetV2's twin at batch 1 ran 15.6 ms with torch ops at
    its ends, 10.1 ms without)."""
    if not nchw_codes(q):
        return q.contiguous(memory_format=torch.channels_last)
    return LayoutCall(q.shape)(q)


def nchw_codes(q: torch.Tensor) -> bool:
    """Whether ``q`` is uint8 (N, C, H, W) codes in NCHW order and not also in channels-last order: what
    :class:`LayoutCall` copies."""
    return (q.dtype == torch.uint8 and q.dim() == 4 and q.is_contiguous()
            and not q.is_contiguous(memory_format=torch.channels_last))


class LayoutCall(KernelCall):
    """The copy of uint8 (N, C, H, W) codes of one shape from NCHW into channels-last order, made once (a plan's
    step before a first convolution, whose input comes from the model's quantize in NCHW order)."""

    __slots__ = ()

    def __init__(self, shape: torch.Size):
        n, c, h, w = shape
        super().__init__(shape, torch.channels_last, library().qc_host_to_channels_last, (),
                         (n, c, h * w, torch.get_num_threads()), None)


class CopyCall(KernelCall):
    """A copy of a dense uint8 value's bytes into a new tensor of the same shape and strides (a plan's step for a
    view or an identity: the flattening before a classifier, dropout at inference). The layout copy with one
    channel is a plain copy; on one thread (a few hundred bytes, where waking another costs more)."""

    __slots__ = ()

    def __init__(self, shape: torch.Size, strides: tuple[int, ...]):
        super().__init__(shape, tuple(strides), library().qc_host_to_channels_last, (), (1, 1, shape.numel(), 1),
                         None)


class MeanCall(KernelCall):
    """Global average pooling (:func:`mean_pixels`) of channels-last uint8 (N, C, H, W) codes of one shape, made
    once: (N, C, 1, 1) out."""

    __slots__ = ()

    def __init__(self, shape: torch.Size):
        n, c, h, w = shape
        super().__init__((n, c, 1, 1), (c, 1, 1, 1), library().qc_host_mean_pixels, (),
                         (n, h * w, c, torch.get_num_threads()), None)


class QuantizeCall(KernelCall):
    """:func:`quantize` of dense float32 values of one shape and strides on one grid, made once: uint8 out with the
    same strides."""

    __slots__ = ()

    def __init__(self, shape: torch.Size, strides: tuple[int, ...], scale: float, zero_point: int, qmin: int = 0,
                 qmax: int = 255):
        super().__init__(shape, tuple(strides), library().qc_host_quantize, (),
                         (shape.numel(), ctypes.c_float(scale), zero_point, qmin, qmax, torch.get_num_threads()),
                         None)


class DequantizeCall(KernelCall):
    """:func:`dequantize` of dense uint8 codes of one shape and strides on one grid, made once: float32 out with
    the same strides."""

    __slots__ = ()
    out_dtype = torch.float32

    def __init__(self, shape: torch.Size, strides: tuple[int, ...], scale: float, zero_point: int):
        super().__init__(shape, tuple(strides), library().qc_host_dequantize, (),
                         (shape.numel(), ctypes.c_float(scale), zero_point, torch.get_num_threads()), None)


def mean_pixels(q: torch.Tensor) -> torch.Tensor:
    """The mean over H and W of uint8 (N, C, H, W) codes, rounded half up, as (N, C, 1, 1) uint8."""
    q = channels_last(q)  # held: the kernel reads it through a raw pointer
    return MeanCall(q.shape)(q)
