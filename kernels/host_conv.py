"""The CPU twin's integer convolutions and linear layers, compiled from ``host_conv.cpp``,
``host_vnni512.cpp`` and ``host_amx.cpp`` (dense), ``host_depthwise.cpp`` (AVX2, AVX-512) and
``host_depthwise_vnni.cpp`` (AVX-512 VNNI).

uint8 activations in channels-last order times int8 weights in int32, the
fixed-point output stage of ``gemmlowp.h`` fused, uint8 out in channels-last
order (a ``torch.channels_last`` tensor, so nothing downstream has to know).
They give the same integers as the float-accumulation path of
:mod:`qcompile.kernels.cpu` (tested), several times faster, and run only
where that is guaranteed: an AVX2 CPU, and the eight-lane output stage's
conditions (no saturation possible, exponents <= 0). Packed weights, the bias
with the zero point's share folded in, and whether the kernels may run are
computed once per layer and kept while its tensors live and are unchanged:
a model's calls pay for the kernels and little else.
``QCOMPILE_HOST_KERNELS=0`` switches them off with the other host kernels.
"""

from __future__ import annotations

import ctypes
import os
import warnings
import weakref
from functools import cache

import torch
from qcompile.kernels import host
from qcompile.kernels.build import HERE, shared_library
from qcompile.kernels.geometry import conv_output_size

FLOAT32_EXACT = 2**24  # float32 holds every integer below this exactly

_HEADERS = ("amx_tiles.h", "conv_shape.h", "core_traits.h", "direct_tile.h", "gather_bytes.h", "padded_input.h",
            "parallel.h", "stage8.h", "stage16.h", "tap_boxes.h")


@cache
def _library() -> ctypes.CDLL | None:
    try:
        lib = shared_library(HERE / "host_conv.cpp", tuple(HERE / h for h in _HEADERS), flags=("-O3",),
                             also=(HERE / "host_amx.cpp", HERE / "host_depthwise.cpp", HERE / "host_depthwise_vnni.cpp",
                                   HERE / "host_vnni512.cpp"))
    except RuntimeError as exc:
        if host.library() is not None:  # else host.library() has already warned about the compiler
            warnings.warn(f"qcompile: {str(exc).splitlines()[0]}; the gemmlowp CPU twin's convolutions use torch "
                          "ops (slower)", stacklevel=2)
        return None
    i32, i64, ptr, int_ = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.qc_conv_supported.restype = int_
    lib.qc_conv_packed_size.argtypes = [i64, i64]
    lib.qc_conv_packed_size.restype = i64
    lib.qc_conv_pack.argtypes = [ptr, i64, i64, ptr]
    lib.qc_conv_gemm.argtypes = [ptr, i32] + [ptr] * 5 + [i32] * 3 + [ptr, int_]
    lib.qc_conv_depthwise.argtypes = [ptr, i32] + [ptr] * 5 + [i32] * 3 + [ptr, int_, int_]
    lib.qc_conv_depthwise_wide.restype = int_
    lib.qc_conv_depthwise_vnni.argtypes = [ptr, i32] + [ptr] * 5 + [i32] * 3 + [ptr, int_]  # as qc_conv_depthwise
    lib.qc_conv_depthwise_vnni_supported.restype = int_
    lib.qc_conv_byte_packed_size.argtypes = [i64, i64]
    lib.qc_conv_byte_packed_size.restype = i64
    lib.qc_conv_byte_pack.argtypes = [ptr, i64, i64, ptr]
    lib.qc_conv_gemm_bytes.argtypes = [ptr, i32] + [ptr] * 6 + [i32] * 3 + [ptr, int_, int_]
    lib.qc_conv_vnni.restype = int_
    lib.qc_conv_byte_isa.restype = int_
    lib.qc_conv_gemm_amx.argtypes = [ptr, i32] + [ptr] * 5 + [i32] * 3 + [ptr, int_]
    lib.qc_conv_amx_runs.argtypes = [ptr]
    lib.qc_conv_amx_runs.restype = int_
    return lib if lib.qc_conv_supported() else None


def library() -> ctypes.CDLL | None:
    """The loaded convolution kernels, or None (no compiler, no AVX2, or QCOMPILE_HOST_KERNELS=0)."""
    return _library() if host.library() is not None else None


_memo: dict[tuple, tuple[tuple[tuple[int, int], ...], object]] = {}


def _cached(tensors: tuple[torch.Tensor, ...], form, compute):
    """``compute()`` for these tensors, once: keyed by the tensors' identities and ``form``, checked against
    their version counters and storage (an in-place change recomputes), dropped when one of them is freed."""
    key = (tuple(id(t) for t in tensors), form)
    state = tuple((t._version, t.data_ptr()) for t in tensors)
    entry = _memo.get(key)
    if entry is not None and entry[0] == state:
        return entry[1]
    if entry is None:
        for t in tensors:
            weakref.finalize(t, _memo.pop, key, None)
    value = compute()
    _memo[key] = (state, value)
    return value


def _weight_rows(weight: torch.Tensor) -> torch.Tensor:
    """int8 ``[C, ...]`` weights as ``[C, depth]`` rows, depth over taps, then input channels (channels last)."""
    rows = weight.permute(0, 2, 3, 1) if weight.dim() == 4 else weight
    return rows.contiguous().reshape(weight.shape[0], -1)


def _gemm_panels(weight: torch.Tensor) -> torch.Tensor:
    """int8 ``[C, ...]`` weights as the GEMM's int16 panels."""
    rows = _weight_rows(weight)
    lib = library()
    packed = torch.empty(lib.qc_conv_packed_size(*rows.shape), dtype=torch.int16)
    lib.qc_conv_pack(rows.data_ptr(), rows.shape[0], rows.shape[1], packed.data_ptr())
    return packed


class _BytePanels:
    """The byte form's weights: int8 panels, each channel's weight sum (the zero point's share of the
    accumulator) and its sum per tap (for taps outside the input), in panels of 16 channels. ``amx``: each
    kernel row's weights padded to whole AMX depth tiles (64 bytes); ``padded``: to groups of four (see
    :func:`padded_rows`)."""

    def __init__(self, weight: torch.Tensor, amx: bool = False, padded: bool = False):
        rows = _weight_rows(weight)
        lib = library()
        # the AMX form's kernel rows padded to 64 bytes: its weight tiles are then the byte form's panels
        packed = _padded_kernel_rows(weight, 64 if amx else 4) if padded or amx else rows
        self.panels = torch.empty(lib.qc_conv_byte_packed_size(*packed.shape), dtype=torch.int8)
        lib.qc_conv_byte_pack(packed.data_ptr(), packed.shape[0], packed.shape[1], self.panels.data_ptr())
        self.sums = rows.long().sum(1)
        channels, taps = weight.shape[0], (weight.shape[2] * weight.shape[3] if weight.dim() == 4 else 1)
        per_tap = rows.long().reshape(channels, taps, -1).sum(2)  # [channels, taps]
        per_tap = torch.nn.functional.pad(per_tap, (0, 0, 0, -channels % 16))
        self.tap_sums = per_tap.reshape(-1, 16, taps).transpose(1, 2).contiguous().to(torch.int32)


def padded_rows(weight: torch.Tensor, dilation: list[int], isa: str) -> bool:
    """Whether the byte form packs this convolution's depth a kernel row at a time, each row's ``KW * C`` weights
    padded with zeros to a multiple of four: the 512-bit VNNI form's layout where a kernel row's codes are not
    whole groups of four (an RGB stem: 7 x 3), so that it reads inner tiles' rows in place
    (``host_vnni512.cpp``; its rule, kept the same)."""
    return isa == "avx512-vnni" and weight.dim() == 4 and dilation[1] == 1 and weight.shape[3] * weight.shape[1] % 4 != 0


def _padded_kernel_rows(weight: torch.Tensor, multiple: int) -> torch.Tensor:
    """int8 ``[C, Cin, KH, KW]`` as ``[C, KH * multiple * ceil(KW * Cin / multiple)]``: each kernel row's taps
    (channels innermost), then zeros; a linear layer's ``[C, K]`` as one kernel row."""
    rows = (weight.permute(0, 2, 3, 1) if weight.dim() == 4 else weight[:, None, None])
    rows = rows.reshape(weight.shape[0], rows.shape[1], -1)
    return torch.nn.functional.pad(rows, (0, -rows.shape[2] % multiple)).reshape(weight.shape[0], -1).contiguous()


def _depthwise_taps(weight: torch.Tensor) -> torch.Tensor:
    """int8 ``[C, 1, KH, KW]`` as float32 ``[KH * KW, C rounded up to 16]``, 0 beyond the channels."""
    channels = weight.shape[0]
    taps = weight.reshape(channels, -1).t().float()
    return torch.nn.functional.pad(taps, (0, -channels % 16)).contiguous()


def runs(bias: torch.Tensor, multiplier: torch.Tensor, exponent: torch.Tensor, acc_bound: int) -> bool:
    """Whether these kernels run for a layer: compiled, AVX2, and the eight-lane output stage's conditions
    (decided once per layer's parameters)."""
    lib = host.library()
    if lib is None or library() is None:
        return False

    def decide() -> bool:
        params = host.int32_params(bias, multiplier, exponent)
        return bool(lib.qc_host_vector_form(acc_bound, *(t.data_ptr() for t in params), params[0].numel()))

    return _cached((bias, multiplier, exponent), ("runs", acc_bound), decide)


def _dims(values) -> ctypes.Array:
    return (ctypes.c_int64 * len(values))(*values)


def _output_size(x, weight, stride, padding, dilation) -> tuple[int, int]:
    return tuple(conv_output_size(x.shape[2 + i], weight.shape[2 + i], stride[i], padding[i], dilation[i])
                 for i in range(2))


class _Call(host.KernelCall):
    """One layer's kernel call for one input shape (channels last, or rows), made once; it holds the tensors its
    arguments point into (packed weights, int32 parameters)."""

    __slots__ = ()


def conv2d(x: torch.Tensor, x_zero: int, weight: torch.Tensor, bias: torch.Tensor, multiplier: torch.Tensor,
           exponent: torch.Tensor, out_zero: int, lo: int, hi: int, stride: list[int], padding: list[int],
           dilation: list[int], isa: str | None = None) -> torch.Tensor:
    """A dense convolution (groups 1) of uint8 ``x`` (N, C, H, W, any memory format); channels-last uint8 out.
    ``isa`` forces the byte form's instructions (one of :data:`BYTE_ISAS` this CPU runs)."""
    x = host.channels_last(x)
    return _conv2d_call(x, x_zero, weight, bias, multiplier, exponent, out_zero, lo, hi, stride, padding,
                        dilation, isa)(x)


def _conv2d_call(x, x_zero, weight, bias, multiplier, exponent, out_zero, lo, hi, stride, padding, dilation,
                 isa=None) -> _Call:
    n, c, h, w = x.shape
    cout, _, kh, kw = weight.shape
    oh, ow = _output_size(x, weight, stride, padding, dilation)
    shape = (n, h, w, c, cout, kh, kw, *stride, *padding, *dilation, oh, ow)
    return _gemm_call(x, x_zero, weight, shape, bias, multiplier, exponent, out_zero, lo, hi, (n, cout, oh, ow),
                      torch.channels_last, isa)


def depthwise(x: torch.Tensor, x_zero: int, weight: torch.Tensor, bias: torch.Tensor, multiplier: torch.Tensor,
              exponent: torch.Tensor, out_zero: int, lo: int, hi: int, stride: list[int], padding: list[int],
              dilation: list[int], isa: str | None = None) -> torch.Tensor:
    """A depthwise convolution (groups = channels, one filter each) of uint8 ``x``; channels-last uint8 out.

    The AVX2 and AVX-512 forms accumulate in float32, exact while ``KH * KW * 255 * 128 < 2^24``
    (:func:`qcompile.kernels.cpu.accumulation_dtype`), which the caller checks; the AVX-512 VNNI form in int32.
    ``isa`` forces a form this CPU runs (one of :data:`DEPTHWISE_ISAS`, up to :func:`depthwise_isa`)."""
    x = host.channels_last(x)  # held: the kernel reads it through a raw pointer
    return _depthwise_call(x, x_zero, weight, bias, multiplier, exponent, out_zero, lo, hi, stride, padding,
                           dilation, isa)(x)


def _depthwise_call(x, x_zero, weight, bias, multiplier, exponent, out_zero, lo, hi, stride, padding, dilation,
                    isa=None) -> _Call:
    n, c, h, w = x.shape
    _, _, kh, kw = weight.shape
    oh, ow = _output_size(x, weight, stride, padding, dilation)
    dims = _dims((n, h, w, c, c, kh, kw, *stride, *padding, *dilation, oh, ow))
    isa = isa or depthwise_isa()
    lib = library()
    if isa == "avx512-vnni":
        if not lib.qc_conv_depthwise_vnni_supported():
            forms = DEPTHWISE_ISAS[:DEPTHWISE_ISAS.index(depthwise_isa()) + 1]
            raise ValueError("the avx512-vnni depthwise form needs AVX-512 (F, BW, VL) and VNNI, which this CPU "
                             f"lacks; choose one of {', '.join(forms)}")
        packed = _cached((weight,), "depthwise quads", lambda: _depthwise_quads(weight))
        start = _cached((weight, bias), ("depthwise start", x_zero), lambda: _depthwise_start(weight, bias, x_zero))
        params = host.int32_params(multiplier, exponent)
        return _Call((n, c, oh, ow), torch.channels_last, lib.qc_conv_depthwise_vnni,
                     (x_zero, packed.data_ptr(), dims, start.data_ptr(), *(t.data_ptr() for t in params), out_zero,
                      lo, hi), (torch.get_num_threads(),), (packed, start, dims, params))
    params = host.int32_params(bias, multiplier, exponent)
    taps = _cached((weight,), "depthwise", lambda: _depthwise_taps(weight))
    return _Call((n, c, oh, ow), torch.channels_last, lib.qc_conv_depthwise,
                 (x_zero, taps.data_ptr(), dims, *(t.data_ptr() for t in params), out_zero, lo, hi),
                 (torch.get_num_threads(), int(isa == "avx512")), (taps, dims, params))


def _depthwise_quads(weight: torch.Tensor) -> torch.Tensor:
    """int8 ``[C, 1, KH, KW]`` as the AVX-512 VNNI form reads it: ``[blocks][groups][KW][16][4]``, channel
    ``16b + c``'s tap ``(4g + j, kx)`` at ``[b][g][kx][c][j]``, zeros beyond the window and the channels; for a
    3x3 window followed by the same with every tap one row down (``j = ky + 1``: the weights of the second of
    two output rows computed from one gather)."""
    channels, _, kh, kw = weight.shape

    def pack(w: torch.Tensor) -> torch.Tensor:  # [C, rows, KW]
        rows = w.shape[1]
        w = torch.nn.functional.pad(w, (0, 0, 0, -rows % 4, 0, -channels % 16))
        return w.reshape(-1, 16, (rows + 3) // 4, 4, kw).permute(0, 2, 4, 1, 3).flatten()

    taps = weight[:, 0]
    if (kh, kw) != (3, 3):
        return pack(taps).contiguous()
    return torch.cat([pack(taps), pack(torch.nn.functional.pad(taps, (0, 0, 1, 0)))])


def _depthwise_start(weight: torch.Tensor, bias: torch.Tensor, x_zero: int) -> torch.Tensor:
    """Each channel's accumulator start in the AVX-512 VNNI form: ``bias - x_zero * sum(weight)``, wrapped to
    int32 (the true sums fit, see host_depthwise_vnni.cpp)."""
    start = bias.long() - x_zero * weight.long().flatten(1).sum(1)
    return ((start + 2**31) % 2**32 - 2**31).to(torch.int32).contiguous()


DEPTHWISE_ISAS = ("avx2", "avx512", "avx512-vnni")  # the depthwise kernel's forms, slowest first


@cache
def depthwise_isa() -> str:
    """The depthwise kernel's best form on this CPU: ``avx512-vnni`` (int32 sums by ``vpdpbusd``, four taps
    per instruction), ``avx512`` (float32 FMA, sixteen channels per vector) or ``avx2``; ``avx2`` where
    ``QCOMPILE_BYTE_ISA`` caps the byte form below ``avx512-vnni`` (the kernels of a CPU without AVX-512)."""
    lib = library()
    if lib is None or BYTE_ISAS.index(byte_isa()) < BYTE_ISAS.index("avx512-vnni"):
        return "avx2"
    if lib.qc_conv_depthwise_vnni_supported():
        return "avx512-vnni"
    return "avx512" if lib.qc_conv_depthwise_wide() else "avx2"


def linear(x: torch.Tensor, x_zero: int, weight: torch.Tensor, bias: torch.Tensor, multiplier: torch.Tensor,
           exponent: torch.Tensor, out_zero: int, lo: int, hi: int, isa: str | None = None) -> torch.Tensor:
    """uint8 ``x[..., K]`` times int8 ``weight[N, K]``: the same GEMM, one pixel per row."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    return _linear_call(x, rows, x_zero, weight, bias, multiplier, exponent, out_zero, lo, hi, isa)(rows)


def _linear_call(x, rows, x_zero, weight, bias, multiplier, exponent, out_zero, lo, hi, isa=None) -> _Call:
    shape = (rows.shape[0], 1, 1, rows.shape[1], weight.shape[0], 1, 1, 1, 1, 0, 0, 1, 1, 1, 1)
    return _gemm_call(rows, x_zero, weight, shape, bias, multiplier, exponent, out_zero, lo, hi,
                      (*x.shape[:-1], weight.shape[0]), torch.contiguous_format, isa)


def prepared(x: torch.Tensor, x_zero: int, weight: torch.Tensor, bias: torch.Tensor, multiplier: torch.Tensor,
             exponent: torch.Tensor, out_zero: int, lo: int, hi: int, geometry: tuple | None,
             acc_bound: int) -> _Call | None:
    """The call of a layer (a convolution with ``geometry`` = (stride, padding, dilation, groups), or a linear
    layer with None) on inputs of ``x``'s shape, made at its first such call and kept with its tensors; None
    where these kernels do not run it (see :func:`runs`; grouped convolutions other than depthwise, and
    depthwise windows beyond float32's exact range, are not theirs). ``x`` is read as it comes: channels
    last for a convolution (:func:`qcompile.kernels.host.channels_last`), rows for a linear layer."""
    if library() is None:
        return None
    threads = torch.get_num_threads()
    key = ("call", tuple(x.shape), x_zero, out_zero, lo, hi, geometry, acc_bound, threads, byte_isa(),
           depthwise_isa())

    def make() -> _Call | None:
        if not runs(bias, multiplier, exponent, acc_bound):
            return None
        if geometry is None:
            rows = x.reshape(-1, x.shape[-1])
            return _linear_call(x, rows, x_zero, weight, bias, multiplier, exponent, out_zero, lo, hi)
        stride, padding, dilation, groups = (list(g) if isinstance(g, tuple) else g for g in geometry)
        if groups == 1:
            return _conv2d_call(x, x_zero, weight, bias, multiplier, exponent, out_zero, lo, hi, stride, padding,
                                dilation)
        # depthwise: acc_bound is the window's bound, and the kernel accumulates in float32
        if groups == x.shape[1] == weight.shape[0] and acc_bound < FLOAT32_EXACT:
            return _depthwise_call(x, x_zero, weight, bias, multiplier, exponent, out_zero, lo, hi, stride,
                                   padding, dilation)
        return None

    return _cached((weight, bias, multiplier, exponent), key, make)


# Without VNNI the byte form corrects each code above 127 one product at a time: cheap where such codes are
# rare (7-bit grids, where only values past the calibrated range reach them), not on full 8-bit grids, where
# the int16 form is faster. It is taken where at most 1 code in this many is above 127 at the layer's first
# call. With VNNI nothing needs correcting.
BYTE_FORM_WIDE_SHARE = 32

BYTE_ISAS = ("avx2", "avx-vnni", "avx512-vnni", "amx")  # qc_conv_byte_isa's answers, by number


@cache
def byte_isa() -> str:
    """The byte form's instructions on this CPU: ``amx`` (AMX-INT8 tiles), ``avx512-vnni``, ``avx-vnni`` or
    ``avx2``; ``QCOMPILE_BYTE_ISA`` (one of :data:`BYTE_ISAS`) caps it, read once (to compare the forms)."""
    lib = library()
    best = BYTE_ISAS[lib.qc_conv_byte_isa()] if lib is not None else "avx2"
    cap = os.environ.get("QCOMPILE_BYTE_ISA")
    if cap is None:
        return best
    if cap not in BYTE_ISAS:
        raise ValueError(f"QCOMPILE_BYTE_ISA={cap!r}: choose one of {', '.join(BYTE_ISAS)}")
    return cap if BYTE_ISAS.index(cap) < BYTE_ISAS.index(best) else best


def byte_form(x: torch.Tensor, weight: torch.Tensor, taps: int, channels: int, isa: str | None = None) -> bool:
    """Whether this layer runs in the byte form: every layer on AMX tiles; else up to 64 taps, depths of 64 and
    more (any depth in the 512-bit AVX-512 VNNI form, which is faster than the int16 form on thin layers too);
    without VNNI only where few codes are above 127, decided once per layer at its first call (its grid does
    not change)."""
    isa = isa or byte_isa()
    if isa == "amx":
        return True
    if not (taps <= 64 and (taps * channels >= 64 or isa == "avx512-vnni")):
        return False
    if isa != "avx2":
        return True
    return _cached((weight,), "few codes above 127",
                   lambda: int((x > 127).sum()) * BYTE_FORM_WIDE_SHARE < x.numel())


def _gemm_call(x, x_zero, weight, shape, bias, multiplier, exponent, out_zero, lo, hi, out_shape, memory_format,
               isa=None) -> _Call:
    """The byte form (vpdpbusd with VNNI, else vpmaddubsw) where :func:`byte_form` takes the layer, else the
    int16 form (faster for thin layers without AVX-512 VNNI, measured); the same integers. ``isa`` forces the
    byte form's instructions (tests: ``avx2`` on a VNNI CPU)."""
    dims = _dims(shape)
    params = host.int32_params(bias, multiplier, exponent)
    isa = isa or byte_isa()
    threads = torch.get_num_threads()
    lib = library()
    if isa == "amx" and not lib.qc_conv_amx_runs(dims):  # 512-bit VNNI, which every AMX CPU has
        isa = "avx512-vnni"
    if byte_form(x, weight, shape[5] * shape[6], shape[3], isa):
        amx = isa == "amx"
        padded = padded_rows(weight, shape[11:13], isa)
        panels = _cached((weight,), ("bytes", amx, padded), lambda: _BytePanels(weight, amx, padded))
        # the zero point's share, through the bias; int32 arithmetic wraps, and the true sum is in range
        params[0] = _cached((weight, bias), ("bias", x_zero),
                            lambda: (bias.long() - x_zero * panels.sums).to(torch.int32))
        before = (x_zero, panels.panels.data_ptr(), panels.tap_sums.data_ptr(), dims,
                  *(t.data_ptr() for t in params), out_zero, lo, hi)
        if amx:  # no tap sums: the AMX form writes the padding out
            return _Call(out_shape, memory_format, lib.qc_conv_gemm_amx, before[:2] + before[3:], (threads,),
                         (panels, dims, params))
        return _Call(out_shape, memory_format, lib.qc_conv_gemm_bytes, before, (threads, BYTE_ISAS.index(isa)),
                     (panels, dims, params))
    packed = _cached((weight,), "int16", lambda: _gemm_panels(weight))
    return _Call(out_shape, memory_format, lib.qc_conv_gemm,
                 (x_zero, packed.data_ptr(), dims, *(t.data_ptr() for t in params), out_zero, lo, hi), (threads,),
                 (packed, dims, params))
