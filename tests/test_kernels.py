"""The GEMMLOWP kernels: spec section 7 vectors, the CUDA kernels run on the host emulation,
the CPU twin, and an independent int64 NumPy reference, all bit-exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from qcompile.kernels import cpu, emulation
from qcompile.kernels import fixed_point as fp

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@pytest.fixture(scope="module")
def lib():
    return emulation.library()


# ----------------------------------------------------------------- references

def ref_srdhm(a: int, b: int) -> int:
    """Spec 7.5 closed form: floor(a*b/2^31 + 1/2), saturating the one overflow."""
    if a == b == INT32_MIN:
        return INT32_MAX
    return (2 * a * b + 2**31) // 2**32


def ref_rdbpot(x: int, e: int) -> int:
    """Spec 7.6 closed form: x / 2^e rounded to nearest, ties away from zero."""
    q, r = divmod(abs(x), 2**e)
    q += 1 if 2 * r >= 2**e and e > 0 else 0
    return q if x >= 0 else -q


def ref_output_stage(acc: int, bias: int, m0: int, exponent: int, zero: int, lo: int, hi: int) -> int:
    sat = lambda v: max(INT32_MIN, min(INT32_MAX, v))  # noqa: E731
    x = sat(acc + bias)
    x = sat(x * 2 ** max(exponent, 0))
    return max(lo, min(hi, sat(ref_rdbpot(ref_srdhm(x, m0), max(-exponent, 0)) + zero)))


def numpy_conv(x, x_zero, w, bias, m0, exponent, out_zero, lo, hi, stride, padding, dilation, groups):
    """Direct int64 convolution over explicit windows, padded with the zero point; output stage in Python ints."""
    x = np.pad(x.numpy().astype(np.int64), ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2),
               constant_values=x_zero) - x_zero
    w = w.numpy().astype(np.int64)
    n, c, h, width = x.shape
    cout, cg, kh, kw = w.shape
    oh = (h - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (width - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    acc = np.zeros((n, cout, oh, ow), dtype=np.int64)
    per_group = cout // groups
    for o in range(cout):
        g = o // per_group
        for ky in range(kh):
            for kx in range(kw):
                ys = ky * dilation[0] + stride[0] * np.arange(oh)
                xs = kx * dilation[1] + stride[1] * np.arange(ow)
                window = x[:, g * cg:(g + 1) * cg][:, :, ys][:, :, :, xs]
                acc[:, o] += np.einsum("ncyx,c->nyx", window, w[o, :, ky, kx])
    out = np.vectorize(ref_output_stage)(acc, bias.numpy()[None, :, None, None], m0.numpy()[None, :, None, None],
                                         exponent.numpy()[None, :, None, None], out_zero, lo, hi)
    return torch.from_numpy(out.astype(np.uint8))


# ------------------------------------------------------------ spec 7 vectors

@pytest.mark.parametrize("real, m0, exponent", [
    (0.0003, 1319413953, -11), (0.0123456789, 1696777188, -6), (1 / 3, 1431655765, -1),
    (0.5, 1073741824, 0), (0.75, 1610612736, 0), (2.5, 1342177280, 2)])
def test_multiplier_decomposition(real, m0, exponent):
    assert fp.quantize_multiplier(real) == (m0, exponent)
    assert m0 * 2.0 ** (exponent - 31) == pytest.approx(real, rel=1e-9)


def test_multiplier_edge_cases():
    assert fp.quantize_multiplier(0.0) == (0, 0)
    assert fp.quantize_multiplier(1e-12) == (0, 0)  # below a 31-bit shift: flushed to zero
    m0, exponent = fp.quantize_multiplier(1 - 2**-40)  # rounds up to 1.0: halved, exponent + 1
    assert (m0, exponent) == (2**30, 1)
    with pytest.raises(ValueError):
        fp.quantize_multiplier(float("nan"))


SRDHM = [(32768, 32768, 1), (-32768, 32768, 0), (-98304, 32768, -1), (INT32_MIN, INT32_MIN, INT32_MAX),
         (INT32_MIN, INT32_MAX, -2147483647), (INT32_MAX, INT32_MAX, 2147483646)]
RDBPOT = [(-5, 1, -3), (-3, 1, -2), (-1, 1, -1), (1, 1, 1), (3, 1, 2), (5, 1, 3), (-12, 3, -2), (12, 3, 2),
          (-20, 3, -3), (-6, 2, -2), (-2, 2, -1), (INT32_MIN, 31, -1), (INT32_MAX, 31, 1), (12345, 0, 12345)]
END_TO_END = [(12345, 7585, 4), (-12345, -7585, -4), (0, 0, 0), (1, 1, 0), (1000000, 614400, 300),
              (-1000000, -614400, -300), (INT32_MAX, 1319413952, 644245), (INT32_MIN, -1319413953, -644245)]


@pytest.mark.parametrize("a, b, expected", SRDHM)
def test_srdhm_vectors(lib, a, b, expected):
    assert lib.qc_srdhm(a, b) == expected
    assert int(fp.srdhm(torch.tensor(a), torch.tensor(b))) == expected
    assert ref_srdhm(a, b) == expected


@pytest.mark.parametrize("x, e, expected", RDBPOT)
def test_rdbpot_vectors(lib, x, e, expected):
    assert lib.qc_rdbpot(x, e) == expected
    assert int(fp.rdbpot(torch.tensor(x), e)) == expected
    assert ref_rdbpot(x, e) == expected


@pytest.mark.parametrize("acc, high_mul, shifted", END_TO_END)
def test_end_to_end_vectors(lib, acc, high_mul, shifted):
    m0 = 1319413953
    assert lib.qc_srdhm(acc, m0) == high_mul and lib.qc_rdbpot(high_mul, 11) == shifted
    assert int(fp.multiply_by_quantized_multiplier(torch.tensor(acc), torch.tensor(m0), -11)) == shifted
    twin = fp.output_stage(torch.tensor([acc]), torch.tensor([0]), torch.tensor([m0]), torch.tensor([-11]),
                           0, INT32_MIN, INT32_MAX)
    assert int(twin) == shifted


def test_zero_point_and_clamp_vectors(lib):
    m0 = 1319413953
    assert lib.qc_output_stage(12345, 0, m0, -11, 10, 0, 255) == 14
    assert lib.qc_output_stage(-40000, 0, m0, -11, 10, 0, 255) == 0
    twin = fp.output_stage(torch.tensor([12345, -40000]), torch.tensor([0]), torch.tensor([m0]),
                           torch.tensor([-11]), 10, 0, 255)
    assert twin.tolist() == [14, 0]


# ----------------------------------------------- random and edge arithmetic

def _edge_and_random(count: int, generator: torch.Generator):
    acc = torch.randint(INT32_MIN, INT32_MAX, (count,), generator=generator, dtype=torch.int64)
    acc[:8] = torch.tensor([INT32_MIN, INT32_MAX, 0, -1, 1, INT32_MIN + 1, 2**30, -(2**30)])
    m0 = torch.randint(0, INT32_MAX, (count,), generator=generator, dtype=torch.int64)
    m0[:4] = torch.tensor([INT32_MIN, INT32_MAX, 2**30, 0])
    # exact ties of SRDHM: a * b = (k + 1/2) * 2^31 with b = 2^30 and odd a
    m0[8:200] = 2**30
    acc[8:200] = 2 * torch.randint(-(2**29), 2**29, (192,), generator=generator) + 1
    return acc, m0


def test_fixed_point_agrees_with_the_c_header_and_the_closed_forms(lib):
    generator = torch.Generator().manual_seed(0)
    acc, m0 = _edge_and_random(4000, generator)
    exponent = torch.randint(-31, 4, (4000,), generator=generator)
    exponent[:32] = torch.tensor([0, -31] * 16)  # shift 0 and 31
    bias = torch.randint(-(2**31), 2**31, (4000,), generator=generator)  # also saturates acc + bias
    twin_srdhm = fp.srdhm(acc, m0)
    twin = fp.output_stage(acc, bias, m0, exponent, -3, INT32_MIN, INT32_MAX)
    for i in range(4000):
        a, m, e, b = int(acc[i]), int(m0[i]), int(exponent[i]), int(bias[i])
        assert int(twin_srdhm[i]) == lib.qc_srdhm(a, m) == ref_srdhm(a, m), (a, m)
        shift = (i % 32)
        assert int(fp.rdbpot(torch.tensor(a), shift)) == lib.qc_rdbpot(a, shift) == ref_rdbpot(a, shift), (a, shift)
        assert int(twin[i]) == lib.qc_output_stage(a, b, m, e, -3, INT32_MIN, INT32_MAX) \
            == ref_output_stage(a, b, m, e, -3, INT32_MIN, INT32_MAX), (a, b, m, e)


def test_quantize_rounds_ties_away_and_handles_nan_and_inf(lib):
    scale = torch.tensor(0.5)
    x = torch.tensor([0.25, 0.75, -0.25, 1.2499, 127.25, 1e30, -1e30, float("nan"), float("inf"), -3.0])
    twin = fp.quantize(x, scale, torch.tensor(3), 0, 255)
    c = [lib.qc_quantize(float(v), 0.5, 3, 0, 255) for v in x]
    assert twin.tolist() == c == [4, 5, 3, 5, 255, 255, 0, 0, 255, 0]
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(5000, generator=generator) * 10
    x[:1000] = (torch.randint(-300, 300, (1000,), generator=generator) + 0.5) * 0.0371  # near-ties
    twin = fp.quantize(x, torch.tensor(0.0371), torch.tensor(128), 0, 255)
    assert twin.tolist() == [lib.qc_quantize(float(v), 0.0371, 128, 0, 255) for v in x]


def test_int4_pack_unpack(lib):
    codes = torch.tensor([-8, 7, -1, 0, 3, -5, 6, -7], dtype=torch.int8)
    packed = fp.pack_int4(codes)
    assert packed.tolist() == [lib.qc_pack_int4(int(codes[i]), int(codes[i + 1])) for i in range(0, 8, 2)]
    assert fp.unpack_int4(packed).tolist() == codes.tolist()
    assert [lib.qc_unpack_int4(int(p), h) for p in packed for h in (0, 1)] == codes.tolist()


# ------------------------------------------------------ the CUDA kernels, emulated

@pytest.mark.parametrize("rows, channels, depth, a_zero", [(1, 1, 1, 0), (37, 20, 70, 7), (64, 48, 300, 255),
                                                           (5, 33, 1031, 128)])
def test_gemm_kernel_twin_and_numpy_agree(rows, channels, depth, a_zero):
    generator = torch.Generator().manual_seed(rows * 1000 + depth)
    a = torch.randint(0, 256, (1, rows, depth), dtype=torch.uint8, generator=generator)
    w = torch.randint(-128, 128, (channels, depth), dtype=torch.int8, generator=generator)
    bias = torch.randint(-5000, 5000, (channels,), dtype=torch.int32, generator=generator)
    m0 = torch.randint(2**30, 2**31 - 1, (channels,), dtype=torch.int32, generator=generator)
    exponent = torch.randint(-14, -6, (channels,), dtype=torch.int32, generator=generator)
    kernel = emulation.kernels().qlinear(a[0], a_zero, w, bias, m0, exponent, 9, 9, 255)
    twin = cpu.qlinear(a[0], a_zero, w, bias, m0, exponent, 9, 9, 255)
    acc = (a[0].numpy().astype(np.int64) - a_zero) @ w.numpy().astype(np.int64).T
    reference = np.vectorize(ref_output_stage)(acc, bias.numpy()[None], m0.numpy()[None], exponent.numpy()[None],
                                               9, 9, 255)
    assert torch.equal(kernel, twin)
    assert np.array_equal(twin.numpy(), reference)
    assert 0 < len(torch.unique(twin)) > min(rows * channels, 3) - 1  # not a constant output


@pytest.mark.parametrize("shape, kernel, stride, padding, dilation, groups", [
    ((2, 8, 9, 9), 3, 1, 1, 1, 1),
    ((1, 6, 11, 7), 3, 2, 1, 1, 3),      # grouped, strided, non-square
    ((1, 16, 8, 8), 3, 1, 1, 1, 16),     # depthwise
    ((1, 4, 10, 10), 3, 1, 2, 2, 1),     # dilated
    ((1, 3, 16, 16), 7, 2, 3, 1, 1),     # ResNet's stem
    ((2, 12, 5, 5), 1, 1, 0, 1, 1),      # pointwise
    ((1, 64, 6, 6), 3, 1, 1, 1, 1),      # depth 576: float32 in two chunks of input channels
    ((1, 128, 5, 5), 3, 1, 1, 1, 2),     # grouped with depth 576: float64
])
def test_conv_kernels_twin_and_numpy_agree(shape, kernel, stride, padding, dilation, groups):
    generator = torch.Generator().manual_seed(sum(shape) + kernel)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    cout = 2 * groups if groups > 1 else 10
    w = torch.randint(-127, 128, (cout, shape[1] // groups, kernel, kernel), dtype=torch.int8, generator=generator)
    bias = torch.randint(-3000, 3000, (cout,), dtype=torch.int32, generator=generator)
    m0, exponent = fp.quantize_multipliers(torch.rand(cout, generator=generator, dtype=torch.float64) * 2e-3 + 1e-4)
    args = (13, w, bias, m0, exponent, 100, 100, 255, [stride] * 2, [padding] * 2, [dilation] * 2, groups)
    kernel_out = emulation.kernels().qconv2d(x, *args)
    twin = cpu.qconv2d(x, *args)
    assert torch.equal(kernel_out, twin)
    assert torch.equal(twin, numpy_conv(x, *args))
    assert len(torch.unique(twin)) > 5


def test_quantize_kernels_per_tensor_and_per_channel():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 4, 3, generator=generator) * 3
    scale, zero = torch.rand(5, generator=generator) * 0.05 + 0.01, torch.randint(0, 256, (5,), generator=generator)
    kernels = emulation.kernels()
    q = kernels.quantize(x, scale.reshape(1, 5, 1, 1), zero.reshape(1, 5, 1, 1), 0, 255)
    twin = fp.quantize(x, scale.reshape(1, 5, 1, 1), zero.reshape(1, 5, 1, 1), 0, 255).to(torch.uint8)
    assert torch.equal(q, twin)
    back = kernels.dequantize(q, scale.reshape(1, 5, 1, 1), zero.reshape(1, 5, 1, 1))
    assert torch.equal(back, fp.dequantize(q, scale.reshape(1, 5, 1, 1), zero.reshape(1, 5, 1, 1)))
    q1 = kernels.quantize(x, torch.tensor(0.02), torch.tensor(128), 0, 255)
    assert torch.equal(q1, fp.quantize(x, torch.tensor(0.02), torch.tensor(128), 0, 255).to(torch.uint8))


def test_twin_accumulates_exactly_in_the_chosen_float_type():
    assert cpu.accumulation_dtype(514) == torch.float32 and cpu.accumulation_dtype(515) == torch.float64
    assert 515 * 255 * 128 >= 2**24 > 514 * 255 * 128  # every partial sum an integer below 2^24: exact
    assert math.log2(4608 * 255 * 128) < 53


def test_twin_host_kernels_and_torch_ops_agree(monkeypatch):
    """The twin's element-wise stages run compiled from gemmlowp.h, or as torch ops without a compiler."""
    from qcompile.kernels import host

    assert host.library() is not None  # g++ is there: the fast path is the one in use
    generator = torch.Generator().manual_seed(7)
    x = torch.randint(0, 256, (2, 24, 7, 7), dtype=torch.uint8, generator=generator)
    w = torch.randint(-127, 128, (40, 24, 3, 3), dtype=torch.int8, generator=generator)
    bias = torch.randint(-(2**20), 2**20, (40,), dtype=torch.int32, generator=generator)
    m0, exponent = fp.quantize_multipliers(torch.rand(40, generator=generator, dtype=torch.float64) * 3e-3 + 1e-5)
    a = torch.randint(0, 256, (3, 40, 5, 5), dtype=torch.uint8, generator=generator)
    b = torch.randint(0, 256, (3, 40, 5, 5), dtype=torch.uint8, generator=generator)
    add_args = (a, 17, 1518500250, -1, b, 140, 1073741824, 0, 1876499845, -19, 90, 90, 255)
    conv_args = (x, 31, w, bias, m0, exponent, 7, 0, 255, [2, 2], [1, 1], [1, 1], 1)
    linear_args = (x.reshape(2, -1)[:, :216], 31, w.reshape(40, -1), bias, m0, exponent, 7, 7, 255)
    fast = [cpu.qconv2d(*conv_args), cpu.qlinear(*linear_args), cpu.qadd(*add_args)]
    monkeypatch.setenv("QCOMPILE_HOST_KERNELS", "0")
    assert host.library() is None
    slow = [cpu.qconv2d(*conv_args), cpu.qlinear(*linear_args), cpu.qadd(*add_args)]
    for f, s in zip(fast, slow, strict=True):
        assert torch.equal(f, s) and len(torch.unique(f)) > 5


@pytest.mark.parametrize("channels", [64, 21])
def test_host_output_stage_eight_lane_form_is_bit_exact(channels):
    """The AVX2 forms (bounded accumulators, int32 or float32; NCHW rows, channels-last, a linear layer's
    channels-innermost rows) against the torch-op reference."""
    from qcompile.kernels import host

    generator = torch.Generator().manual_seed(11)
    acc = torch.randint(-(2**24), 2**24, (3, channels, 9, 13), dtype=torch.int32, generator=generator)
    acc[:, :8] = torch.arange(-2**10, 2**10, 4, dtype=torch.int32)[: 9 * 13].view(9, 13)  # ties below
    bias = torch.randint(-(2**20), 2**20, (channels,), dtype=torch.int32, generator=generator)
    bias[:8] = 0
    m0 = torch.randint(2**30, 2**31 - 1, (channels,), dtype=torch.int32, generator=generator)
    m0[:8] = 2**30  # x * 0.5: exact SRDHM ties for odd x, then RDBPOT ties at every exponent
    exponent = torch.randint(-31, 1, (channels,), dtype=torch.int32, generator=generator)
    exponent[:8] = torch.tensor([0, -1, -2, -3, -4, -5, -30, -31])
    shape = (1, channels, 1, 1)
    want = fp.output_stage(acc.long(), bias.view(shape), m0.view(shape), exponent.view(shape), 5, 0, 255)
    want = want.to(torch.uint8)
    avx2 = torch.backends.cpu.get_cpu_capability().lower() in ("avx2", "avx512")
    layouts = {"nchw": (acc, want, 1),
               "channels-last": (acc.contiguous(memory_format=torch.channels_last), want, 1),
               "linear": (acc.permute(0, 2, 3, 1).reshape(-1, channels), want.permute(0, 2, 3, 1).reshape(-1, channels),
                          1)}
    for layout, (values, expected, axis) in layouts.items():
        for dtype in (torch.int32, torch.float32):
            for bound, vector in ((2**24, avx2), (2**31 - 2**10, False), (None, False)):  # the last two could saturate
                got, ran = host.run_output_stage(values.to(dtype), bias, m0, exponent, 5, 0, 255, axis,
                                                 acc_bound=bound)
                assert ran == vector and got.is_contiguous(), (layout, dtype, bound)
                assert torch.equal(got, expected), (layout, dtype, bound)
    assert len(torch.unique(want)) > 30  # not a saturated output


@pytest.mark.parametrize("a_m0, a_exponent, b_m0, b_exponent, out_m0, out_exponent, vector", [
    (1518500250, -1, 1073741824, 0, 1876499845, -19, True),
    (1073741824, 0, 1073741824, 0, 1073741824, -20, True),  # exact halves: ties in every step
    (2147483647, -3, 1200000000, -7, 1500000000, -16, True),
    (1518500250, 1, 1073741824, 0, 1876499845, -21, False),  # a left shift of input a: the scalar form
    (1518500250, -20, 1073741824, 0, 1876499845, -19, "eight"),  # a's shift of 20: only the eight-lane form
])
def test_host_add_vector_forms_are_bit_exact(monkeypatch, a_m0, a_exponent, b_m0, b_exponent, out_m0,
                                               out_exponent, vector):
    from qcompile.kernels import host

    generator = torch.Generator().manual_seed(5)
    a = torch.randint(0, 256, (3, 7, 11, 5), dtype=torch.uint8, generator=generator)  # 1155: a tail of 3
    b = torch.randint(0, 256, (3, 7, 11, 5), dtype=torch.uint8, generator=generator)
    from qcompile.cpu_features import cpu_flags

    # the clamp's bottom at the output zero point (a fused ReLU: the 512-bit form leaves out the rounding of
    # negative sums), one below it and far below (the rounding kept)
    for lo in (90, 89, 0):
        args = (a, 17, a_m0, a_exponent, b, 140, b_m0, b_exponent, out_m0, out_exponent, 90, lo, 255)
        got, form = host.run_add(*args, cpu.ADD_LEFT_SHIFT, lookup=False)
        eight, eight_form = host.run_add(*args, cpu.ADD_LEFT_SHIFT, wide=False)
        looked_up, lookup_form = host.run_add(*args, cpu.ADD_LEFT_SHIFT)
        avx2 = torch.backends.cpu.get_cpu_capability().lower() in ("avx2", "avx512")
        avx512 = "avx512f" in cpu_flags()
        assert form == (0 if not (vector and avx2) else 2 if avx512 and vector is True else 1)
        assert eight_form == (1 if vector and avx2 else 0)
        assert lookup_form == (3 if avx512 else eight_form)  # the table holds any form's codes
        monkeypatch.setenv("QCOMPILE_HOST_KERNELS", "0")
        want = cpu.qadd(*args)  # the torch-op form
        assert torch.equal(got, want) and torch.equal(eight, want) and len(torch.unique(want)) > 3, lo
        assert torch.equal(looked_up, want), lo
        monkeypatch.setenv("QCOMPILE_HOST_KERNELS", "1")
        topped = host.run_add(*args[:-1], 200, cpu.ADD_LEFT_SHIFT)[0]  # a clamp's top below 255
        assert torch.equal(topped, want.clamp(max=200))


def _conv_reference(x, x_zero, weight, bias, m0, exponent, out_zero, lo, hi, stride, padding, dilation, groups=1):
    """float64 accumulation (exact for these sizes), then the torch-op output stage."""
    acc = torch.nn.functional.conv2d(x.double() - x_zero, weight.double(), None, stride, padding, dilation, groups)
    shape = (1, -1, 1, 1)
    return fp.output_stage(acc.round().long(), bias.view(shape), m0.view(shape), exponent.view(shape), out_zero, lo,
                           hi).to(torch.uint8)


@pytest.mark.parametrize("batch, cin, cout, size, kernel, stride, padding, dilation", [
    (1, 3, 5, 9, 3, 1, 1, 1),       # depth 27 (odd): the int16 form, one partial panel
    (2, 7, 19, 11, 3, 2, 1, 2),     # strided, dilated, a tail of 3 channels; depth 63: int16
    (1, 64, 48, 14, 3, 1, 1, 1),    # the byte form: pixels over whole and partial tiles, whole panels
    (3, 32, 40, 5, 1, 1, 0, 1),     # 1x1, depth 32: a plain GEMM in int16
    (2, 96, 24, 6, 1, 1, 0, 1),     # 1x1, depth 96: a plain GEMM in bytes
    (1, 128, 40, 5, 1, 1, 0, 1),    # 1x1, depth 128, 40 channels: two panels per pass (full-width 512-bit
                                    # cores), a partial tile, a last panel alone
    (1, 3, 16, 40, 7, 2, 3, 1),     # a stem: wide padding, depth 147 in bytes; with VNNI kernel rows of 21
                                    # codes padded to 24, inner tiles read in place
    (1, 3, 20, 25, 3, 2, 1, 1),     # MobileNet's stem: kernel rows of 9 codes (12 with VNNI)
    (1, 2, 8, 12, 9, 1, 4, 1),      # 81 taps: the int16 form (the byte form takes up to 64)
    (1, 256, 20, 7, 3, 1, 1, 1),    # depth 2304: AMX's 32-row tiles, a partial last tile
    (1, 512, 150, 5, 3, 1, 1, 1),   # depth 4608: blocks of panels (VNNI: as many as 5/8 of the L2 cache
                                    # holds), tiles kept; the next block fetched ahead where two fit
    (1, 192, 40, 13, 3, 1, 1, 1),   # inner tiles read in place, two panels per pass (VNNI)
    (2, 16, 24, 33, 3, 2, 1, 1),    # strided, inner tiles read in place, tiles across image rows
    (3, 64, 32, 7, 3, 1, 1, 1),     # a fifth of the taps on the padding: (VNNI) tiles of pixels with the same
                                    # taps leave the rest out, some tiles of pixels of two or three kinds
    (2, 32, 16, 9, 5, 1, 2, 1),     # two border rows and columns, each with its own taps
    (1, 64, 144, 10, 3, 1, 1, 1),   # weights over eight times the padded input: (AMX) threads split the panels
    (2, 80, 24, 9, 1, 2, 0, 1),     # a strided 1x1 layer (ResNet's downsample): AMX reads its input in place,
                                    # 80 channels in two depth tiles; the last tiles, which would read past the
                                    # input, copied first
])
def test_host_integer_convolution_is_bit_exact(batch, cin, cout, size, kernel, stride, padding, dilation):
    """The AVX2 integer GEMM convolutions (bytes with the codes above 127 and the padding corrected, or int16
    pairs; int32 sums, fused output stage, channels last) against float64 accumulation and the torch-op output
    stage; the twin dispatches to them where they may run. Zero points below and above 127 (padding then
    needs the correction); codes of a full 8-bit grid (half above 127: the int16 form) and of a 7-bit grid
    with a few codes past it (the byte form where the layer's depth takes it)."""
    from qcompile.kernels import host_conv

    generator = torch.Generator().manual_seed(batch * 1000 + cin)
    full = torch.randint(0, 256, (batch, cin, size, size), dtype=torch.uint8, generator=generator)
    narrow = torch.randint(0, 128, full.shape, dtype=torch.uint8, generator=generator)
    narrow.view(-1)[:: 101] += 128  # 1% past the grid, as values beyond the calibrated range give
    weight = torch.randint(-128, 128, (cout, cin, kernel, kernel), dtype=torch.int8, generator=generator)
    bias = torch.randint(-(2**16), 2**16, (cout,), dtype=torch.int32, generator=generator)
    scale = torch.rand(cout, dtype=torch.float64, generator=generator) * 2e-3 + 2e-3
    m0, exponent = fp.quantize_multipliers(scale / (cin * kernel * kernel) ** 0.5)
    geometry = ([stride] * 2, [padding] * 2, [dilation] * 2)
    avx2 = torch.backends.cpu.get_cpu_capability().lower() in ("avx2", "avx512")
    assert host_conv.runs(bias, m0, exponent, cpu.accumulator_bound(cin * kernel * kernel)) == avx2
    for isa in _byte_isas():
        # depths of 64 and more, any depth in the 512-bit VNNI form; every undilated layer on AMX tiles (a
        # dilated one runs in the 512-bit VNNI form)
        vnni512 = isa == "avx512-vnni" or (isa == "amx" and dilation > 1)
        deep = (isa == "amx" and dilation == 1) or (kernel * kernel <= 64 and (kernel * kernel * cin >= 64 or vnni512))
        # without VNNI the byte form takes codes mostly up to 127; with it, any codes
        for x, bytes_expected in ((full, deep and isa != "avx2"), (narrow, deep)):
            layer_weight = weight.clone()  # a layer of its own: the form is decided at a layer's first call
            nhwc = x.contiguous(memory_format=torch.channels_last)
            assert host_conv.byte_form(nhwc, layer_weight, kernel * kernel, cin, isa) == bytes_expected
            for zero, hi in ((5, 255), (131, 200)):  # a clamp below 255 (ReLU6's top) too
                want = _conv_reference(x, zero, layer_weight, bias, m0, exponent, 7, 0, hi, *geometry)
                assert len(torch.unique(want)) > 20  # neither saturated nor constant
                if isa == host_conv.byte_isa():  # the form the twin dispatches to by itself
                    got = cpu.qconv2d(x, zero, layer_weight, bias, m0, exponent, 7, 0, hi, *geometry, 1)
                    assert torch.equal(got, want), zero
                    assert got.is_contiguous(memory_format=torch.channels_last) == avx2  # the integer kernel's
                if avx2:  # NCHW and channels-last inputs alike
                    for layout in (x, nhwc):
                        got = host_conv.conv2d(layout, zero, layer_weight, bias, m0, exponent, 7, 0, hi, *geometry,
                                               isa=isa)
                        assert torch.equal(got, want), (isa, zero)


@pytest.mark.parametrize("groups, kernel", [(1, 1), (1, 3), (48, 3)])
def test_host_kernels_with_a_fused_relu_skip_only_rounding_that_the_clamp_removes(groups, kernel):
    """Where the clamp's bottom is at or above the output zero point (a fused ReLU), the 512-bit output stage
    leaves out the rounding of negative products (ties away from zero): every such result is clamped to the
    bottom anyway. Small sums (codes within 2 of the zero point, weights -1..1) halved and shifted by 0-2 bits,
    so that outputs sit at the clamp's bottom and ties are frequent, for the dense (direct 1x1 and 3x3) and
    depthwise kernels, against the reference; a bottom below the zero point keeps the rounding."""
    generator = torch.Generator().manual_seed(groups + kernel)
    x = torch.randint(7, 12, (2, 48, 9, 9), dtype=torch.uint8, generator=generator)
    weight = torch.randint(-1, 2, (48, 48 // groups, kernel, kernel), dtype=torch.int8, generator=generator)
    bias = torch.randint(-3, 4, (48,), dtype=torch.int32, generator=generator)
    m0 = torch.full((48,), 2**30, dtype=torch.int32)  # x * 0.5
    exponent = -(torch.arange(48, dtype=torch.int32) % 3)
    geometry = ([1, 1], [kernel // 2] * 2, [1, 1])
    for out_zero, lo, hi in ((40, 40, 255), (40, 43, 200), (40, 39, 255), (40, 0, 255)):
        want = _conv_reference(x, 9, weight, bias, m0, exponent, out_zero, lo, hi, *geometry, groups)
        bottom = want == lo if lo >= out_zero else want < out_zero  # clamped, or negative results kept
        assert bottom.float().mean() > 0.1 and len(torch.unique(want)) > 2
        got = cpu.qconv2d(x, 9, weight, bias, m0, exponent, out_zero, lo, hi, *geometry, groups)
        assert torch.equal(got, want), (out_zero, lo, hi)


def test_host_convolution_of_an_input_too_large_to_keep_a_padded_copy_of():
    """A padded layer's input is copied with its padding written out; a copy over 32 MB is made for the call
    alone instead of in the thread's kept buffer (padded_input.h): the same integers either way."""
    generator = torch.Generator().manual_seed(21)
    x = torch.randint(0, 256, (2, 16, 1100, 1000), dtype=torch.uint8, generator=generator)  # 35 MB
    weight = torch.randint(-128, 128, (16, 16, 3, 3), dtype=torch.int8, generator=generator)
    bias = torch.randint(-(2**12), 2**12, (16,), dtype=torch.int32, generator=generator)
    m0, exponent = fp.quantize_multipliers(torch.full((16,), 2e-4, dtype=torch.float64))
    geometry = ([1, 1], [1, 1], [1, 1])
    got = cpu.qconv2d(x, 9, weight, bias, m0, exponent, 7, 0, 255, *geometry, 1)
    want = _conv_reference(x, 9, weight, bias, m0, exponent, 7, 0, 255, *geometry)
    assert torch.equal(got, want) and len(torch.unique(want)) > 20


def test_host_kernels_take_an_empty_batch():
    """A batch of no images through every form this CPU runs (dense convolutions deep enough for blocks of
    weight panels, depthwise, linear, add): empty outputs of the right shapes, no fault."""
    from qcompile.kernels import host, host_conv

    if host_conv.library() is None:
        pytest.skip("no AVX2 host kernels on this machine")
    m0, exponent = fp.quantize_multipliers(torch.full((64,), 1e-4, dtype=torch.float64))
    bias = torch.zeros(64, dtype=torch.int32)
    x = torch.zeros((0, 512, 7, 7), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    weight = torch.ones((64, 512, 3, 3), dtype=torch.int8)
    for isa in _byte_isas():
        out = host_conv.conv2d(x, 3, weight, bias, m0, exponent, 0, 0, 255, [1, 1], [1, 1], [1, 1], isa=isa)
        assert out.shape == (0, 64, 7, 7), isa
    thin = torch.zeros((0, 64, 9, 9), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    for isa in host_conv.DEPTHWISE_ISAS[:host_conv.DEPTHWISE_ISAS.index(host_conv.depthwise_isa()) + 1]:
        out = host_conv.depthwise(thin, 3, torch.ones((64, 1, 3, 3), dtype=torch.int8), bias, m0, exponent, 0, 0,
                                  255, [1, 1], [1, 1], [1, 1], isa=isa)
        assert out.shape == (0, 64, 9, 9), isa
    rows = torch.zeros((0, 512), dtype=torch.uint8)
    assert host_conv.linear(rows, 3, torch.ones((64, 512), dtype=torch.int8), bias, m0, exponent, 0, 0,
                            255).shape == (0, 64)
    assert host.add(thin, 1, 1 << 30, 0, thin, 2, 1 << 30, 0, 1 << 30, -19, 9, 0, 255, cpu.ADD_LEFT_SHIFT).shape == \
        thin.shape


def _byte_isas() -> tuple[str, ...]:
    """The byte form's instruction sets this CPU runs: AVX2 always (with AVX2), each VNNI it has, and AMX-INT8
    tiles where it has them."""
    from qcompile.kernels import host_conv

    from qcompile.cpu_features import cpu_flags

    flags = cpu_flags()
    found = ("avx2",) + (("avx-vnni",) if "avx_vnni" in flags else ()) + (
        ("avx512-vnni",) if {"avx512_vnni", "avx512f"} <= flags else ()) + (
        ("amx",) if {"amx_tile", "amx_int8"} <= flags else ())
    # the kernels' own detection agrees with the CPU's flags: AMX, else the best VNNI it has, else AVX2
    if host_conv.library() is not None:
        assert host_conv.byte_isa() == found[-1]
    return found


@pytest.mark.parametrize("batch, channels, size, kernel, stride, padding, dilation", [
    (1, 96, 13, 3, 1, 1, 1),    # MobileNet's 3x3 (unrolled window)
    (2, 21, 12, 3, 2, 1, 1),    # strided, a tail of 5 channels
    (1, 16, 11, 5, 1, 2, 2),    # 5x5 dilated (the window loop)
    (1, 40, 9, 3, 1, 1, 1),     # 40 channels: a tail of 8 in the sixteen-channel form
    (2, 136, 7, 3, 1, 1, 1),    # VNNI form: two blocks of 64 channels, then 8
])
def test_host_depthwise_convolution_is_bit_exact(batch, channels, size, kernel, stride, padding, dilation):
    """The depthwise kernel (float32 FMA over the window, or int32 by vpdpbusd; fused output stage) against
    float64, in every form this CPU runs."""
    generator = torch.Generator().manual_seed(channels)
    x = torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, generator=generator)
    weight = torch.randint(-128, 128, (channels, 1, kernel, kernel), dtype=torch.int8, generator=generator)
    bias = torch.randint(-(2**14), 2**14, (channels,), dtype=torch.int32, generator=generator)
    m0, exponent = fp.quantize_multipliers(torch.rand(channels, dtype=torch.float64, generator=generator) * 2e-3
                                           + 1e-3)
    geometry = ([stride] * 2, [padding] * 2, [dilation] * 2)
    acc = torch.nn.functional.conv2d(x.double() - 119, weight.double(), None, *geometry, channels)
    shape = (1, -1, 1, 1)
    want = fp.output_stage(acc.round().long(), bias.view(shape), m0.view(shape), exponent.view(shape), 3, 3,
                           255).to(torch.uint8)
    got = cpu.qconv2d(x, 119, weight, bias, m0, exponent, 3, 3, 255, *geometry, channels)
    assert torch.equal(got, want) and len(torch.unique(want)) > 20
    avx2 = torch.backends.cpu.get_cpu_capability().lower() in ("avx2", "avx512")
    assert got.is_contiguous(memory_format=torch.channels_last) == avx2  # written by the depthwise kernel
    if avx2:  # every form this CPU runs: AVX2, and AVX-512 where the CPU has it
        from qcompile.kernels import host_conv

        from qcompile.cpu_features import cpu_flags

        flags = cpu_flags()
        best = ("avx512-vnni" if {"avx512f", "avx512bw", "avx512_vnni"} <= flags
                else "avx512" if "avx512f" in flags else "avx2")
        assert host_conv.depthwise_isa() == best
        clamped = want.clamp(max=190)  # a clamp below 255 (ReLU6's top)
        for isa in host_conv.DEPTHWISE_ISAS[:host_conv.DEPTHWISE_ISAS.index(best) + 1]:
            assert torch.equal(host_conv.depthwise(x, 119, weight, bias, m0, exponent, 3, 3, 255, *geometry,
                                                   isa=isa), want), isa
            assert torch.equal(host_conv.depthwise(x, 119, weight, bias, m0, exponent, 3, 3, 190, *geometry,
                                                   isa=isa), clamped), isa


def test_host_integer_linear_is_bit_exact_and_follows_changed_parameters():
    from qcompile.kernels import host_conv

    if host_conv.library() is None:
        pytest.skip("no AVX2 host kernels on this machine")
    generator = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (5, 77), dtype=torch.uint8, generator=generator)
    weight = torch.randint(-128, 128, (33, 77), dtype=torch.int8, generator=generator)
    bias = torch.randint(-5000, 5000, (33,), dtype=torch.int32, generator=generator)
    m0, exponent = fp.quantize_multipliers(torch.full((33,), 4e-4, dtype=torch.float64))

    def reference():
        acc = (x.long() - 9) @ weight.long().t()
        return fp.output_stage(acc, bias, m0, exponent, 5, 0, 255).to(torch.uint8)

    assert torch.equal(host_conv.linear(x, 9, weight, bias, m0, exponent, 5, 0, 255), reference())
    weight.mul_(-1).clamp_(-127, 127)  # an in-place change: the packed copy must follow
    assert torch.equal(host_conv.linear(x, 9, weight, bias, m0, exponent, 5, 0, 255), reference())
    bias.add_(3000)  # and the bias with the zero point's share folded in
    assert torch.equal(host_conv.linear(x, 9, weight, bias, m0, exponent, 5, 0, 255), reference())
    assert len(torch.unique(reference())) > 20
    for rows in range(1, 10):  # every partial tile of eight rows (a tile's rows run in chains of 8 / rows)
        part = torch.randint(0, 256, (rows, 77), dtype=torch.uint8, generator=generator)
        acc = (part.long() - 9) @ weight.long().t()
        want = fp.output_stage(acc, bias, m0, exponent, 5, 0, 255).to(torch.uint8)
        assert torch.equal(host_conv.linear(part, 9, weight, bias, m0, exponent, 5, 0, 255), want), rows


def _twin_conv_in_two_threads(x, weight, bias, m0, exponent):
    torch.set_num_threads(2)
    return cpu.qconv2d(x, 128, weight, bias, m0, exponent, 3, 0, 255, [1, 1], [1, 1], [1, 1], 1)


def test_host_kernel_threads_serve_a_forked_child():
    """The host kernels keep their threads between calls; a child forked after the parent used them starts
    its own (the parent's do not exist in it) and gets the same result, instead of waiting forever."""
    import multiprocessing

    generator = torch.Generator().manual_seed(4)
    x = torch.randint(0, 256, (2, 16, 20, 20), dtype=torch.uint8, generator=generator)
    weight = torch.randint(-128, 128, (24, 16, 3, 3), dtype=torch.int8, generator=generator)
    bias = torch.zeros(24, dtype=torch.int32)
    m0, exponent = fp.quantize_multipliers(torch.full((24,), 2e-4, dtype=torch.float64))
    threads = torch.get_num_threads()
    try:
        here = _twin_conv_in_two_threads(x, weight, bias, m0, exponent)
    finally:
        torch.set_num_threads(threads)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        there = pool.apply_async(_twin_conv_in_two_threads, (x, weight, bias, m0, exponent)).get(timeout=120)
    assert torch.equal(here, there) and len(torch.unique(here)) > 20


def test_host_kernel_ranges_each_run_once_whichever_thread_claims_them():
    """A call's ranges go to whichever thread claims them first, the calling thread taking those no other has
    (parallel.h): with more ranges than cores, over calls of different sizes in quick succession, every output
    is the one thread's."""
    generator = torch.Generator().manual_seed(6)
    weight = torch.randint(-128, 128, (40, 16, 3, 3), dtype=torch.int8, generator=generator)
    bias = torch.randint(-(2**12), 2**12, (40,), dtype=torch.int32, generator=generator)
    m0, exponent = fp.quantize_multipliers(torch.full((40,), 3e-4, dtype=torch.float64))
    inputs = [torch.randint(0, 256, (n, 16, size, size), dtype=torch.uint8, generator=generator)
              for n, size in ((1, 5), (2, 17), (1, 30), (3, 9))]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        want = [cpu.qconv2d(x, 7, weight, bias, m0, exponent, 3, 0, 255, [1, 1], [1, 1], [1, 1], 1) for x in inputs]
        torch.set_num_threads(6)
        for _ in range(20):
            for x, expected in zip(inputs, want, strict=True):
                got = cpu.qconv2d(x, 7, weight, bias, m0, exponent, 3, 0, 255, [1, 1], [1, 1], [1, 1], 1)
                assert torch.equal(got, expected)
    finally:
        torch.set_num_threads(threads)
    assert all(len(torch.unique(w)) > 20 for w in want)


def test_host_quantize_is_the_torch_op_form():
    """The compiled quantize (gemmlowp.h's qc::quantize, vectorized) against the torch-op form: exact ties in
    both directions, NaN, infinities, the clamp, and both memory orders."""
    from qcompile.kernels import host

    generator = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 17, 19, generator=generator) * 3
    scale, zero = torch.tensor(0.0625), torch.tensor(100, dtype=torch.int32)
    flat = x.view(-1)
    flat[:6] = torch.tensor([0.03125, -0.03125, 0.09375, float("nan"), float("inf"), -float("inf")])
    flat[6:10] = torch.tensor([2.5, -2.5, 1e9, -1e9]) * 0.0625
    want = fp.quantize(x, scale, zero, 3, 250).to(torch.uint8)
    for layout in (torch.contiguous_format, torch.channels_last):
        got = host.quantize(x.contiguous(memory_format=layout), float(scale), int(zero), 3, 250)
        assert got.is_contiguous(memory_format=layout) and torch.equal(got, want)
    assert want.view(-1)[:10].tolist() == [101, 100, 102, 3, 250, 3, 103, 98, 250, 3]  # ties away from 0
    assert torch.equal(torch.ops.qcompile.quantize(x, scale, zero, 3, 250), want)


def test_host_dequantize_is_the_torch_op_form():
    """The compiled dequantize (gemmlowp.h's qc::dequantize) against the torch-op form, every code, scales that
    round, both memory orders."""
    from qcompile.kernels import host

    q = torch.arange(256, dtype=torch.uint8).repeat(3 * 5).reshape(3, 5, 16, 16)
    for scale, zero in ((0.0123456789, 131), (3.1e-5, 0), (0.1, 255)):
        scale_t, zero_t = torch.tensor(scale, dtype=torch.float32), torch.tensor(zero, dtype=torch.int32)
        want = fp.dequantize(q, scale_t, zero_t)
        assert len(torch.unique(want)) == 256
        for layout in (torch.contiguous_format, torch.channels_last):
            laid = q.contiguous(memory_format=layout)
            got = host.dequantize(laid, float(scale_t), zero)
            assert got.is_contiguous(memory_format=layout) and torch.equal(got, want), (scale, layout)
            assert torch.equal(torch.ops.qcompile.dequantize(laid, scale_t, zero_t), want)


@pytest.mark.parametrize("kernel, stride, padding, dilation, ceil_mode", [
    (3, 2, 1, 1, False),  # ResNet's stem pooling
    (2, 2, 0, 1, False),
    (3, 2, 1, 1, True),   # ceil_mode: the last window hangs over the edge
    (3, 1, 1, 2, False),  # dilated
    (2, 3, 0, 1, True),   # columns no window reads
])
def test_host_max_pool_is_torchs(kernel, stride, padding, dilation, ceil_mode):
    """torch.ops.qcompile.max_pool2d (the host kernel, channels last) against torch's uint8 pooling in NCHW."""
    generator = torch.Generator().manual_seed(kernel * 10 + stride)
    for channels in (37, 64):  # 37: a channel tail; 64: whole vectors
        q = torch.randint(0, 256, (2, channels, 15, 13), dtype=torch.uint8, generator=generator)
        want = torch.nn.functional.max_pool2d(q, kernel, stride, padding, dilation, ceil_mode)
        for layout in (torch.contiguous_format, torch.channels_last):
            got = torch.ops.qcompile.max_pool2d(q.contiguous(memory_format=layout), [kernel] * 2, [stride] * 2,
                                                [padding] * 2, [dilation] * 2, ceil_mode)
            assert got.is_contiguous(memory_format=torch.channels_last) and torch.equal(got, want), layout


@pytest.mark.parametrize("channels, height, width", [(2, 9, 11), (3, 9, 11), (4, 9, 11), (3, 40, 41), (5, 9, 11)])
def test_host_layout_copy_of_a_few_channels_is_torchs(channels, height, width):
    """The NCHW -> channels-last copy of an RGB-like input (2 to 4 planes interleaved sixteen pixels at a time
    where the CPU has AVX-512 VBMI; 99 pixels leave a tail, 1,640 span two tasks), and of five channels."""
    from qcompile.kernels import host

    generator = torch.Generator().manual_seed(channels * height)
    q = torch.randint(0, 256, (2, channels, height, width), dtype=torch.uint8, generator=generator)
    moved = host.channels_last(q)
    assert moved.is_contiguous(memory_format=torch.channels_last) and torch.equal(moved, q)


def test_host_layout_copy_and_global_mean_are_torchs():
    """The host kernels' NCHW -> channels-last copy and the integer mean over H, W against torch, both layouts."""
    from qcompile.kernels import host
    from qcompile.kernels.ops import _mean_pixels

    generator = torch.Generator().manual_seed(3)
    q = torch.randint(0, 256, (3, 37, 9, 11), dtype=torch.uint8, generator=generator)  # 99 pixels: a partial block
    moved = host.channels_last(q)
    assert moved.is_contiguous(memory_format=torch.channels_last) and torch.equal(moved, q)
    assert host.channels_last(moved) is moved
    # the mean rounds half up: 99 pixels of 255 but one 0 give 252.42 -> 252; all 255 -> 255; the rest random
    q[0, 0] = 255
    q[0, 0, 0, 0] = 0
    q[0, 1] = 255
    want = (q.to(torch.int64).sum(dim=(2, 3), keepdim=True) + 49).div(99, rounding_mode="floor").to(torch.uint8)
    assert want[0, 0].item() == 252 and want[0, 1].item() == 255
    for layout in (torch.contiguous_format, torch.channels_last):
        got = torch.ops.qcompile.global_avg_pool(q.contiguous(memory_format=layout))
        assert got.shape == (3, 37, 1, 1) and torch.equal(got, want), layout
        assert torch.equal(_mean_pixels(q.contiguous(memory_format=layout)), want)  # the CUDA registration's form


def test_amx_form_takes_the_undilated_layers_where_its_tiles_pay():
    """On a CPU with AMX-INT8 the dense GEMM runs on tiles (host_amx.cpp) for undilated layers of 16 output
    pixels or more, except 1x1 layers over 32 channels or fewer (the 512-bit VNNI form's thin tiles are faster
    there); elsewhere, and on every layer of a CPU without AMX, it never does."""
    from qcompile.kernels import host_conv

    from qcompile.cpu_features import cpu_flags

    lib = host_conv.library()
    if lib is None:
        pytest.skip("no AVX2 host kernels on this machine")
    amx = {"amx_tile", "amx_int8"} <= cpu_flags()

    def runs(n, h, c, cout, k, stride, dilation):  # a square layer, padding k // 2
        oh = (h + 2 * (k // 2) - dilation * (k - 1) - 1) // stride + 1
        dims = host_conv._dims((n, h, h, c, cout, k, k, stride, stride, k // 2, k // 2, dilation, dilation, oh, oh))
        return bool(lib.qc_conv_amx_runs(dims))

    assert runs(1, 56, 64, 64, 3, 1, 1) == amx  # ResNet's 3x3 layers
    assert runs(1, 56, 64, 128, 3, 2, 1) == amx  # strided
    assert runs(1, 224, 3, 64, 7, 2, 1) == amx  # an RGB stem
    assert runs(1, 7, 96, 24, 1, 1, 1) == amx  # 1x1 over more than 32 channels
    assert not runs(1, 14, 64, 64, 3, 1, 2)  # dilated
    assert not runs(1, 56, 32, 16, 1, 1, 1)  # thin 1x1
    assert not runs(1, 1, 512, 1000, 1, 1, 1)  # a linear layer over one row
