"""The CUDA kernels without a GPU: the tensor-core instruction's fragment layout, every op's kernel run on
the host emulation with the GPU's launch shapes (real layer sizes, a batch past the old grid limit, a real
model), bit-exact with the CPU twin; the nvcc build for sm_80 / sm_90 / PTX with int8 tensor-core
instructions in its machine code; the ops' CUDA registration and its errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import qcompile.kernels  # noqa: F401
import torch
from qcompile.kernels import cpu, cuda, emulation, modules, ops
from qcompile.kernels import fixed_point as fp
from qcompile.kernels.device_ops import conv_shape

from tests.test_kernels import numpy_conv


@pytest.fixture(scope="module")
def kernels():
    return emulation.kernels()


def _layer(generator, shape, cout, kernel, groups):
    w = torch.randint(-127, 128, (cout, shape[1] // groups, kernel, kernel), dtype=torch.int8, generator=generator)
    bias = torch.randint(-3000, 3000, (cout,), dtype=torch.int32, generator=generator)
    m0, exponent = fp.quantize_multipliers(torch.rand(cout, generator=generator, dtype=torch.float64) * 2e-3 + 1e-4)
    return w, bias, m0, exponent


# ------------------------------------------------------------------ mma.sync m16n8k32, emulated


def test_mma_fragments_follow_the_ptx_layout_and_multiply():
    """Fragments laid out from whole matrices by the PTX ISA's tables for mma.m16n8k32 .s8 (written here
    element by element, as the tables are), one emulated instruction, D scattered back: D = A B + C."""
    generator = torch.Generator().manual_seed(11)
    a = torch.randint(-128, 128, (16, 32), dtype=torch.int32, generator=generator)
    b = torch.randint(-128, 128, (32, 8), dtype=torch.int32, generator=generator)
    c = torch.randint(-(2**20), 2**20, (16, 8), dtype=torch.int32, generator=generator)
    fa, fb, fc = torch.zeros(32, 4, dtype=torch.int64), torch.zeros(32, 2, dtype=torch.int64), torch.zeros(32, 4)
    fc = fc.to(torch.int32)
    for lane in range(32):
        group, thread = lane // 4, lane % 4
        for i in range(16):  # a_i: row groupID (+8 for i in 4..7, 12..15), column 4 t + (i & 3) (+16 for i >= 8)
            row = group + (8 if 4 <= i < 8 or i >= 12 else 0)
            col = thread * 4 + (i & 3) + (16 if i >= 8 else 0)
            fa[lane, i // 4] |= (int(a[row, col]) & 0xFF) << (8 * (i % 4))
        for i in range(8):  # b_i: row 4 t + (i & 3) (+16 for i >= 4), column groupID
            fb[lane, i // 4] |= (int(b[thread * 4 + (i & 3) + (16 if i >= 4 else 0), group]) & 0xFF) << (8 * (i % 4))
        for i in range(4):  # c_i: row groupID (+8 for i >= 2), column 2 t + (i & 1)
            fc[lane, i] = c[group + (8 if i >= 2 else 0), thread * 2 + (i & 1)]
    to_words = lambda t: t.to(torch.uint32).view(torch.int32) if hasattr(torch, "uint32") else t.to(torch.int32)  # noqa: E731
    d_frag = emulation.mma_s8_16832(to_words(fa), to_words(fb), fc)
    d = torch.zeros(16, 8, dtype=torch.int32)
    for lane in range(32):
        for i in range(4):
            d[lane // 4 + (8 if i >= 2 else 0), (lane % 4) * 2 + (i & 1)] = d_frag[lane, i]
    assert torch.equal(d, (a @ b + c).to(torch.int32))


# ------------------------------------------------------------------ convolutions and linear layers


@pytest.mark.parametrize("shape, cout, kernel, stride, padding, dilation, groups, mma", [
    ((2, 8, 9, 9), 10, 3, 1, 1, 1, 1, True),         # depth 72: a partial second K tile, byte-wise loads
    ((1, 48, 20, 20), 24, 3, 1, 1, 1, 1, True),      # depth 432: seven K tiles through the two stages
    ((1, 32, 9, 9), 48, 3, 2, 1, 1, 1, True),        # 16-byte loads, 48 of a 64-channel tile
    ((1, 3, 20, 20), 20, 7, 2, 3, 1, 1, True),       # an RGB stem
    ((1, 16, 10, 10), 32, 3, 1, 1, 1, 16, False),    # depthwise, channel multiplier 2
    ((1, 24, 9, 7), 24, 5, 2, 2, 1, 24, False),      # depthwise 5x5, strided, non-square
    ((1, 64, 12, 12), 64, 3, 1, 1, 1, 2, True),      # two groups of 32 on tensor cores
    ((1, 12, 8, 8), 12, 3, 1, 1, 1, 3, False),       # thin groups: the direct kernel
    ((1, 16, 10, 10), 80, 3, 1, 2, 2, 1, True),      # dilated; 80 channels: a second, partial channel tile
    ((3, 96, 5, 5), 40, 1, 1, 0, 1, 1, True),        # pointwise, 75 rows: a partial row tile
    ((2, 16, 13, 13), 144, 1, 1, 0, 1, 1, True),     # 338 rows, 144 channels: partial tiles both ways
])
def test_conv_kernels_emulated_twin_and_numpy_agree(kernels, shape, cout, kernel, stride, padding, dilation,
                                                     groups, mma):
    generator = torch.Generator().manual_seed(sum(shape) + kernel + cout)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    w, bias, m0, exponent = _layer(generator, shape, cout, kernel, groups)
    args = (37, w, bias, m0, exponent, 100, 3, 250, [stride] * 2, [padding] * 2, [dilation] * 2, groups)
    assert kernels.uses_mma(conv_shape(x.shape, w.shape, *args[8:])) == mma
    out = kernels.qconv2d(x, *args)
    twin = cpu.qconv2d(x, *args)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, twin)
    assert torch.equal(twin, numpy_conv(x, *args))
    assert len(torch.unique(twin)) > 50 and {3, 250} & set(torch.unique(twin).tolist())  # a clamp reached


@pytest.mark.parametrize("name, shape, cout, kernel, stride, groups", [
    ("resnet18 layer1 3x3", (2, 64, 56, 56), 64, 3, 1, 1),
    ("mobilenet_v2 stem", (2, 3, 224, 224), 32, 3, 2, 1),
    ("mobilenet_v2 depthwise 112x112", (2, 32, 112, 112), 32, 3, 1, 32),
    ("mobilenet_v2 pointwise 112x112", (2, 32, 112, 112), 16, 1, 1, 1),
])
def test_real_layer_sizes_at_batch_2(kernels, name, shape, cout, kernel, stride, groups):
    generator = torch.Generator().manual_seed(len(name))
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    w, bias, m0, exponent = _layer(generator, shape, cout, kernel, groups)
    args = (120, w, bias, m0, exponent, 128, 0, 255, [stride] * 2, [kernel // 2] * 2, [1, 1], groups)
    assert torch.equal(kernels.qconv2d(x, *args), cpu.qconv2d(x, *args)), name


@pytest.mark.slow
def test_a_batch_past_the_old_grid_limit(kernels):
    """112 x 112 at batch 84: 1,053,696 output pixels, 65,856 tiles of 16 rows (the old kernel's grid.y, over
    CUDA's 65,535); the tensor-core kernel puts its 8,232 row tiles of 128 in grid.x."""
    shape = (84, 16, 112, 112)
    generator = torch.Generator().manual_seed(84)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    w, bias, m0, exponent = _layer(generator, shape, 16, 1, 1)
    args = (9, w, bias, m0, exponent, 77, 0, 255, [1, 1], [0, 0], [1, 1], 1)
    rows = 84 * 112 * 112
    assert -(-rows // 16) > 65535
    row_tiles, channel_tiles, groups_per_launch, launches = kernels.conv_grid(conv_shape(x.shape, w.shape,
                                                                                         *args[8:]))
    assert (row_tiles, channel_tiles, groups_per_launch, launches) == (-(-rows // 128), 1, 1, 1)
    assert torch.equal(kernels.qconv2d(x, *args), cpu.qconv2d(x, *args))


def test_many_groups_launch_in_parts_and_empty_inputs_launch_nothing(kernels):
    shape = conv_shape((1, 16 * 70000, 1, 1), (16 * 70000, 16, 1, 1), [1, 1], [0, 0], [1, 1], 70000)
    assert kernels.conv_grid(shape) == (1, 1, 65535, 2)  # grid.z stays within CUDA's 65,535
    generator = torch.Generator().manual_seed(0)
    w, bias, m0, exponent = _layer(generator, (0, 8, 5, 5), 4, 3, 1)
    empty = torch.zeros(0, 8, 5, 5, dtype=torch.uint8)
    out = kernels.qconv2d(empty, 3, w, bias, m0, exponent, 0, 0, 255, [1, 1], [1, 1], [1, 1], 1)
    assert out.shape == (0, 4, 5, 5)
    assert kernels.qlinear(torch.zeros(0, 8, dtype=torch.uint8), 3, w.reshape(4, -1)[:, :8], bias, m0, exponent,
                           0, 0, 255).shape == (0, 4)


def test_linear_kernel_over_leading_dimensions(kernels):
    generator = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (2, 3, 7, 200), dtype=torch.uint8, generator=generator)
    w = torch.randint(-127, 128, (130, 200), dtype=torch.int8, generator=generator)
    bias = torch.randint(-3000, 3000, (130,), dtype=torch.int32, generator=generator)
    m0, exponent = fp.quantize_multipliers(torch.rand(130, generator=generator, dtype=torch.float64) * 1e-3 + 1e-5)
    args = (90, w, bias, m0, exponent, 20, 0, 255)
    out = kernels.qlinear(x, *args)
    assert out.shape == (2, 3, 7, 130) and torch.equal(out, cpu.qlinear(x, *args))
    from qcompile.kernels.host_conv import _memo

    packed = len(_memo)
    assert torch.equal(kernels.qlinear(x, *args), out) and len(_memo) == packed  # packed once


def test_tensors_on_two_devices_are_refused_before_any_kernel(kernels):
    from qcompile.kernels.device_ops import KernelError

    x = torch.zeros(1, 4, 5, 5, dtype=torch.uint8)
    weight = torch.zeros(4, 4, 3, 3, dtype=torch.int8, device="meta")  # stands for a model moved to a GPU
    params = [torch.zeros(4, dtype=torch.int32)] * 3
    with pytest.raises(KernelError, match=r"different devices \(cpu, meta\); move the input to the model's device"):
        kernels.qconv2d(x, 0, weight, *params, 0, 0, 255, [1, 1], [1, 1], [1, 1], 1)
    with pytest.raises(KernelError, match="different devices"):
        kernels.quantize(torch.zeros(3), torch.tensor(0.1, device="meta"), torch.tensor(0), 0, 255)


def test_packed_weights_follow_in_place_changes(kernels):
    generator = torch.Generator().manual_seed(8)
    x = torch.randint(0, 256, (1, 32, 6, 6), dtype=torch.uint8, generator=generator)
    w, bias, m0, exponent = _layer(generator, x.shape, 32, 3, 1)
    args = [40, w, bias, m0, exponent, 10, 0, 255, [1, 1], [1, 1], [1, 1], 1]
    before = kernels.qconv2d(x, *args)
    w.neg_()  # the same tensor, a new version
    after = kernels.qconv2d(x, *args)
    assert not torch.equal(before, after) and torch.equal(after, cpu.qconv2d(x, *args))


# ------------------------------------------------------------------ element-wise ops and pooling


def test_elementwise_and_pooling_kernels_are_the_cpu_ops(kernels):
    generator = torch.Generator().manual_seed(21)
    a = torch.randint(0, 256, (2, 40, 9, 11), dtype=torch.uint8, generator=generator)
    b = torch.randint(0, 256, (2, 40, 9, 11), dtype=torch.uint8, generator=generator)
    a_cl = a.contiguous(memory_format=torch.channels_last)
    add = (17, 1518500250, -1, 140, 1073741824, 0, 1876499845, -19, 90, 90, 255)
    for left, right in ((a, b), (a_cl, b.contiguous(memory_format=torch.channels_last)), (a, b[:1])):
        out = kernels.qadd(left, add[0], add[1], add[2], right, *add[3:])
        assert torch.equal(out, ops.qadd(left, add[0], add[1], add[2], right, *add[3:]))
    assert kernels.qadd(a_cl, add[0], add[1], add[2], b, *add[3:]).is_contiguous(memory_format=torch.channels_last)
    mul = (131, b[:, :, :1, :1], 7, 1200000000, -9, 128, 0, 255)
    assert torch.equal(kernels.qmul(a, *mul), ops.qmul(a, *mul))
    assert torch.equal(kernels.requantize_codes(a_cl, 33, 1600000000, -1, 140), ops.requantize_codes(a_cl, 33,
                                                                                                     1600000000, -1,
                                                                                                     140))
    for pool in (([3, 3], [2, 2], [1, 1], [1, 1], False), ([2, 2], [2, 2], [0, 0], [1, 1], True),
                 ([3, 3], [1, 1], [1, 1], [2, 2], False)):
        out = kernels.max_pool2d(a_cl, *pool)
        assert torch.equal(out, ops.max_pool2d(a, *pool)) and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(kernels.global_avg_pool(a_cl), ops.global_avg_pool(a))
    for pool in (([3, 3], [2, 2], [1, 1], False, True), ([3, 3], [2, 2], [1, 1], True, False),
                 ([2, 3], [1, 2], [1, 0], True, True), ([4, 4], [4, 4], [0, 0], False, True)):
        out = kernels.avg_pool2d(a_cl, 61, *pool)
        assert torch.equal(out, ops.avg_pool2d(a, 61, *pool)), pool
    x = torch.randn(2, 40, 9, 11, generator=generator) * 4
    x[0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    assert torch.equal(kernels.quantize(x, torch.tensor(0.03), torch.tensor(120), 0, 255),
                       ops.quantize(x, torch.tensor(0.03), torch.tensor(120), 0, 255))
    assert torch.equal(kernels.dequantize(a, torch.tensor(0.05), torch.tensor(7)),
                       ops.dequantize(a, torch.tensor(0.05), torch.tensor(7)))


def test_a_real_model_runs_bit_exact_on_the_emulated_kernels(tmp_path, monkeypatch):
    """The seed CNN, converted for the gemmlowp backend on real digits: its emitted modules' ops routed to the
    emulated CUDA kernels give the CPU twin's outputs, code for code."""
    from qcompile.data import open_data
    from tests.test_gemmlowp_backend import _digits

    _, model = _digits(tmp_path, "gemmlowp")
    x = next(iter(open_data("builtin:mnist5k", limit=8)))[0]
    expected = model(x)
    emulated = emulation.kernels()
    called = set()
    for name in ("quantize", "dequantize", "qconv2d", "qlinear", "qadd", "max_pool2d", "global_avg_pool"):
        def routed(*args, _name=name):
            called.add(_name)
            return getattr(emulated, _name)(*args)
        monkeypatch.setattr(ops, name, routed)
    # the modules' kept host-kernel calls, and the model's plan of them, skip the ops on CPU tensors: every call
    # through the ops here
    monkeypatch.setattr(modules, "_keep", lambda module, state, make: None)
    monkeypatch.setenv("QCOMPILE_PLAN", "0")

    assert torch.equal(model(x), expected)
    assert {"quantize", "dequantize", "qconv2d", "qlinear", "max_pool2d"} <= called


# ------------------------------------------------------------------ registration, errors, the nvcc build


def test_every_op_has_a_cuda_kernel():
    run = subprocess.run([sys.executable, "-m", "qcompile.kernels.cuda_cli", "--coverage"], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    covered = cuda.coverage()
    assert set(covered) == set(ops.defined_ops()) and all(covered.values())
    assert run.stdout.strip().splitlines()[-1] == f"cuda coverage: {len(covered)}/{len(covered)} ops"


def test_missing_gpu_or_nvcc_is_named(monkeypatch, tmp_path):
    if not torch.cuda.is_available():  # this machine: no GPU, a clear error and no silent CPU fallback
        with pytest.raises(cuda.CudaUnavailable, match=r"no CUDA GPU is visible to torch .* on the CPU"):
            cuda.load()
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(cuda, "Path", lambda p: tmp_path / "none" if p == "/usr/local/cuda/bin/nvcc" else Path(p))
    with pytest.raises(cuda.CudaUnavailable, match="no nvcc was found.*install the CUDA toolkit"):
        cuda.nvcc()


def _cuobjdump() -> str | None:
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton
    except ImportError:
        return None
    candidate = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(candidate) if candidate.exists() else None


@pytest.mark.slow
def test_nvcc_builds_sm80_sm90_and_ptx_with_int8_tensor_core_instructions(tmp_path):
    obj = tmp_path / "kernels.o"
    run = subprocess.run(cuda.compile_command(obj, shared=False), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    cuobjdump = _cuobjdump()
    if cuobjdump is None:
        pytest.skip("no cuobjdump (CUDA toolkit or triton's copy) to read the machine code with")
    listing = subprocess.run([cuobjdump, "-lelf", "-lptx", str(obj)], capture_output=True, text=True).stdout
    assert "sm_80.cubin" in listing and "sm_90.cubin" in listing and "sm_80.ptx" in listing, listing
    sass = subprocess.run([cuobjdump, "-sass", str(obj)], capture_output=True, text=True).stdout
    imma, arch = {"sm_80": 0, "sm_90": 0}, None
    for line in sass.splitlines():
        if line.strip().startswith("arch = "):
            arch = line.split("=")[1].strip()
        elif "IMMA.16832.S8.S8" in line:
            imma[arch] += 1
    assert imma["sm_80"] >= 8 and imma["sm_90"] >= 8, imma  # the convolutions' inner loop: int8 tensor cores


@pytest.mark.slow
def test_the_gpu_library_builds_and_loads_without_a_gpu():
    import ctypes

    library = ctypes.CDLL(str(cuda.build()))
    assert all(hasattr(library, f"qc_kernels_{name}") for name in ("conv", "quantize", "dequantize", "add", "mul",
                                                                     "requantize", "max_pool", "mean_pixels"))
    generator = torch.Generator().manual_seed(1)
    shape = conv_shape((2, 64, 9, 9), (48, 64, 3, 3), [1, 1], [1, 1], [1, 1], 1)
    # the GPU build and the emulation decide the same kernel and grid from one header
    from qcompile.kernels.device_ops import Kernels

    gpu = Kernels(library, lambda device: None, "gpu build")
    assert gpu.uses_mma(shape) and gpu.conv_grid(shape) == emulation.kernels().conv_grid(shape)
    assert np.array_equal(*(k.pack_conv_weights(torch.randint(-9, 9, (48, 64, 3, 3), dtype=torch.int8,
                                                              generator=generator.manual_seed(2)), shape)[0].numpy()
                            for k in (gpu, emulation.kernels())))
