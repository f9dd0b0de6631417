"""The CUDA kernels on a GPU: every op bit-exact with the CPU twin, an emitted model moved with ``.to("cuda")``
bit-exact with its CPU run and without a copy to the host. These need an NVIDIA GPU and are skipped without
one; ``scripts/gpu_check.sh`` runs them where there is one (tests/test_cuda_kernels.py runs the same kernels
on the host emulation everywhere)."""

from __future__ import annotations

import pytest
import qcompile.kernels  # noqa: F401
import torch
from qcompile.kernels import cpu, cuda, ops
from qcompile.kernels import fixed_point as fp

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (scripts/gpu_check.sh)")


def _layer(generator, shape, cout, kernel, groups):
    w = torch.randint(-127, 128, (cout, shape[1] // groups, kernel, kernel), dtype=torch.int8, generator=generator)
    bias = torch.randint(-3000, 3000, (cout,), dtype=torch.int32, generator=generator)
    m0, exponent = fp.quantize_multipliers(torch.rand(cout, generator=generator, dtype=torch.float64) * 2e-3 + 1e-4)
    return w, bias, m0, exponent


def _cuda(args):
    return [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]


@pytest.mark.parametrize("shape, cout, kernel, stride, padding, dilation, groups", [
    ((2, 8, 9, 9), 10, 3, 1, 1, 1, 1),
    ((1, 3, 224, 224), 64, 7, 2, 3, 1, 1),        # ResNet's stem
    ((2, 64, 56, 56), 64, 3, 1, 1, 1, 1),         # ResNet-18 layer 1
    ((2, 32, 112, 112), 32, 3, 1, 1, 1, 32),      # MobileNetV2 depthwise
    ((2, 32, 112, 112), 16, 1, 1, 0, 1, 1),       # MobileNetV2 pointwise
    ((84, 16, 112, 112), 16, 1, 1, 0, 1, 1),      # past the old grid's 65,535 row tiles
    ((1, 64, 12, 12), 64, 3, 1, 2, 2, 2),         # grouped, dilated
    ((0, 16, 8, 8), 16, 3, 1, 1, 1, 1),           # empty
])
def test_conv_on_the_gpu_is_the_twin(shape, cout, kernel, stride, padding, dilation, groups):
    generator = torch.Generator().manual_seed(sum(shape) + cout)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    w, bias, m0, exponent = _layer(generator, shape, cout, kernel, groups)
    args = [x, 37, w, bias, m0, exponent, 100, 0, 255, [stride] * 2, [padding] * 2, [dilation] * 2, groups]
    out = torch.ops.qcompile.qconv2d(*_cuda(args))
    assert out.is_cuda and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out.cpu(), cpu.qconv2d(*args))


def test_every_other_op_on_the_gpu_is_the_cpu_op():
    generator = torch.Generator().manual_seed(3)
    a = torch.randint(0, 256, (2, 40, 9, 11), dtype=torch.uint8, generator=generator)
    b = torch.randint(0, 256, (2, 40, 9, 11), dtype=torch.uint8, generator=generator)
    x = torch.randn(2, 40, 9, 11, generator=generator) * 4
    w = torch.randint(-127, 128, (130, 200), dtype=torch.int8, generator=generator)
    bias = torch.randint(-3000, 3000, (130,), dtype=torch.int32, generator=generator)
    m0, exponent = fp.quantize_multipliers(torch.rand(130, generator=generator, dtype=torch.float64) * 1e-3 + 1e-5)
    rows = torch.randint(0, 256, (3, 7, 200), dtype=torch.uint8, generator=generator)
    calls = {
        "qlinear": [rows, 90, w, bias, m0, exponent, 20, 0, 255],
        "quantize": [x, torch.tensor(0.03), torch.tensor(120), 0, 255],
        "dequantize": [a, torch.tensor(0.05), torch.tensor(7)],
        "qadd": [a, 17, 1518500250, -1, b, 140, 1073741824, 0, 1876499845, -19, 90, 90, 255],
        "qmul": [a, 131, b[:, :, :1, :1], 7, 1200000000, -9, 128, 0, 255],
        "requantize_codes": [a, 33, 1600000000, -1, 140],
        "max_pool2d": [a, [3, 3], [2, 2], [1, 1], [1, 1], True],
        "avg_pool2d": [a, 61, [3, 3], [2, 2], [1, 1], True, False],
        "global_avg_pool": [a],
    }
    for name, args in calls.items():
        on_gpu = getattr(torch.ops.qcompile, name)(*_cuda(args))
        assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), getattr(ops, name)(*args)), name
    assert set(calls) | {"qconv2d"} == set(ops.defined_ops())


def test_an_emitted_model_moves_to_the_gpu_and_stays_there(tmp_path):
    from qcompile.data import open_data
    from tests.test_gemmlowp_backend import _digits

    _, model = _digits(tmp_path, "gemmlowp")
    x = next(iter(open_data("builtin:mnist5k", limit=64)))[0]
    expected = model(x)
    cuda.load()
    model = model.to("cuda")
    x_gpu = x.cuda()
    assert torch.equal(model(x_gpu).cpu(), expected)  # first call: packs the weights
    torch.cuda.set_sync_debug_mode("error")  # any copy to the host or other synchronization raises
    try:
        out = model(x_gpu)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.is_cuda and torch.equal(out.cpu(), expected)
