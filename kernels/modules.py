"""The modules that the ``gemmlowp`` backend emits: thin wrappers around ``torch.ops.qcompile.*``.

Each subclasses the module of the neutral integer stage it stands for
(:mod:`qcompile.integer.reference`: the same arguments and state) and
computes the same values with the kernels. Their state is plain tensors (int8 weights, int32 bias / multipliers /
exponents), so an emitted model saves with ``torch.save``, scripts with
TorchScript, and exports with ``torch.export`` (which torch's packed
quantized weights cannot). Settings (zero points, clamps, strides) are
constructor arguments, as codegen writes them.
"""

from __future__ import annotations

import weakref

import torch
from qcompile.kernels import cpu, host, host_conv, ops, plan  # ops registers torch.ops.qcompile
from torch import Tensor, nn

from qcompile.integer import reference


def _eager(x: Tensor) -> bool:
    """Whether a call may go straight to the op's CPU function in :mod:`qcompile.kernels.ops`, past torch's
    dispatcher (about ten microseconds of boxing per call): a plain CPU tensor in eager mode. Traced (torch.fx
    proxies), exported or compiled (fake tensors, ``is_compiling``) and scripted calls keep the op."""
    return type(x) is Tensor and x.is_cpu and not torch.compiler.is_compiling()


# A weighted module's kernel call for its last input (cpu.conv2d_call / linear_call), with what it was made
# for; held here, not in the module, so that the module still pickles and copies.
_kept: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _kept_call(module: nn.Module, x: Tensor, make):
    """The host kernels' call of ``module`` on ``x``, or None: made by ``make()`` at the first call and kept
    while the input's shape, the thread count, the kernels chosen and the module's tensors (the same ones,
    unchanged in place) stay as they were. It spares each call the lookup of :func:`cpu.conv2d_call` (about
    eight microseconds; a model makes a hundred calls)."""
    buffers = module._buffers  # nn.Module.__getattr__ would take 0.7 us a tensor
    w, b, m, e = buffers["weight"], buffers["bias"], buffers["multiplier"], buffers["exponent"]
    # spelled out, not unpacked from generators (a third of this function's time)
    state = (x.shape, torch.get_num_threads(), host_conv.library() is not None, host_conv.byte_isa(),
             host_conv.depthwise_isa(), w._version, b._version, m._version, e._version, w.data_ptr(),
             b.data_ptr(), m.data_ptr(), e.data_ptr())
    return _keep(module, state, make)


def _keep(module: nn.Module, state: tuple, make):
    """``make()``, made again whenever ``state`` differs from the one it was made for."""
    kept = _kept.get(module)
    if kept is None or kept[0] != state:
        kept = _kept[module] = (state, make())
    return kept[1]


class KernelModel(nn.Module):
    """The base of an emitted model on these kernels: a call runs as its plan (:mod:`qcompile.kernels.plan`: the
    kernel calls of an earlier run with inputs like these, replayed without the modules around them) where one
    may run, and through its modules, as any ``nn.Module``, everywhere else."""

    def __call__(self, *args, **kwargs):
        if not kwargs:
            out = plan.call(self, args)
            if out is not NotImplemented:
                return out
        return super().__call__(*args, **kwargs)


class _OnGrid(nn.Module):
    def __init__(self, scale: float, zero_point: int):
        super().__init__()
        # from the constructor arguments, so not part of the saved state
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32), persistent=False)
        self.register_buffer("zero_point", torch.tensor(zero_point, dtype=torch.int32), persistent=False)


class Quantize(_OnGrid):
    """float32 -> uint8 on one grid: ``round(clamp(zp + x / scale, 0, 255))``."""

    def __init__(self, scale: float = 1.0, zero_point: int = 0):
        super().__init__(scale, zero_point)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return torch.ops.qcompile.quantize(x, self.scale, self.zero_point, 0, 255)
        return self._call(x)

    @torch.jit.unused
    def _call(self, x: Tensor) -> Tensor:
        op = ops.quantize if _eager(x) else torch.ops.qcompile.quantize
        return op(x, self.scale, self.zero_point, 0, 255)

    @torch.jit.unused
    def _kernel_call(self, x: Tensor):
        """The host kernel's call of this quantize on ``x`` (float32, dense in NCHW or channels-last order), for
        a plan, or None; made for its grid (the module's tensors, which the plan watches)."""
        if not (_eager(x) and x.dtype == torch.float32 and host.library() is not None and self.scale.numel() == 1
                and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))):
            return None
        return host.QuantizeCall(x.shape, x.stride(), float(self.scale), int(self.zero_point))


class Dequantize(_OnGrid):
    """uint8 -> float32: ``scale * (q - zp)``."""

    def __init__(self, scale: float = 1.0, zero_point: int = 0):
        super().__init__(scale, zero_point)

    def forward(self, q: Tensor) -> Tensor:
        # the float code after a quantized region may reshape with .view(): give it the standard layout
        if torch.jit.is_scripting():
            return torch.ops.qcompile.dequantize(q, self.scale, self.zero_point).contiguous()
        return self._call(q)

    @torch.jit.unused
    def _call(self, q: Tensor) -> Tensor:
        op = ops.dequantize if _eager(q) else torch.ops.qcompile.dequantize
        return op(q, self.scale, self.zero_point).contiguous()

    @torch.jit.unused
    def _kernel_call(self, q: Tensor):
        """The host kernel's call of this dequantize on ``q`` (contiguous uint8), for a plan, or None; made for
        its grid (the module's tensors, which the plan watches)."""
        if not (_eager(q) and q.dtype == torch.uint8 and q.is_contiguous() and host.library() is not None
                and self.scale.numel() == 1 and self.scale.dtype == torch.float32):
            return None
        return host.DequantizeCall(q.shape, q.stride(), float(self.scale), int(self.zero_point))


class QConv2d(reference.QConv2d):
    """uint8 convolution: int8 weights, int32 bias, per-channel fixed-point requantization, clamp."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return torch.ops.qcompile.qconv2d(x, self.input_zero_point, self.weight, self.bias, self.multiplier,
                                              self.exponent, self.output_zero_point, self.clamp_min, self.clamp_max,
                                              self.stride, self.padding, self.dilation, self.groups)
        return self._call(x)

    @torch.jit.unused
    def _call(self, x: Tensor) -> Tensor:
        call = self._kernel_call(x)
        if call is not None:
            return call(x)
        op = ops.qconv2d if _eager(x) else torch.ops.qcompile.qconv2d
        return op(x, self.input_zero_point, self.weight, self.bias, self.multiplier, self.exponent,
                  self.output_zero_point, self.clamp_min, self.clamp_max, self.stride, self.padding, self.dilation,
                  self.groups)

    @torch.jit.unused
    def _kernel_call(self, x: Tensor):
        """The host kernels' kept call of this layer on ``x`` (a function of it), or None where they do not
        take it."""
        if not (_eager(x) and x.dtype == torch.uint8 and x.is_contiguous(memory_format=torch.channels_last)):
            return None
        return _kept_call(self, x, lambda: cpu.conv2d_call(
            x, self.input_zero_point, self.weight, self.bias, self.multiplier, self.exponent, self.output_zero_point,
            self.clamp_min, self.clamp_max, self.stride, self.padding, self.dilation, self.groups))


class QLinear(reference.QLinear):
    """uint8 linear layer, as :class:`QConv2d`."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return torch.ops.qcompile.qlinear(x, self.input_zero_point, self.weight, self.bias, self.multiplier,
                                              self.exponent, self.output_zero_point, self.clamp_min, self.clamp_max)
        return self._call(x)

    @torch.jit.unused
    def _call(self, x: Tensor) -> Tensor:
        call = self._kernel_call(x)
        if call is not None:
            return call(x)
        op = ops.qlinear if _eager(x) else torch.ops.qcompile.qlinear
        return op(x, self.input_zero_point, self.weight, self.bias, self.multiplier, self.exponent,
                  self.output_zero_point, self.clamp_min, self.clamp_max)

    @torch.jit.unused
    def _kernel_call(self, x: Tensor):
        """As :meth:`QConv2d._kernel_call`; the call reads ``x`` as rows."""
        if not (_eager(x) and x.dtype == torch.uint8 and x.is_contiguous()):
            return None
        # the call reads x's rows through its pointer (any leading dimensions: x is contiguous)
        return _kept_call(self, x, lambda: cpu.linear_call(
            x, self.input_zero_point, self.weight, self.bias, self.multiplier, self.exponent,
            self.output_zero_point, self.clamp_min, self.clamp_max))


class QAdd(reference.QAdd):
    """``a + b`` of two uint8 tensors on their own grids, onto the output grid (optionally clamped: ReLU)."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return torch.ops.qcompile.qadd(a, self.a[0], self.a[1], self.a[2], b, self.b[0], self.b[1], self.b[2],
                                           self.output[0], self.output[1], self.output[2], self.clamp_min,
                                           self.clamp_max)
        return self._call(a, b)

    @torch.jit.unused
    def _call(self, a: Tensor, b: Tensor) -> Tensor:
        call = self._kernel_call(a, b)
        if call is not None:
            return call(a, b)
        op = ops.qadd if _eager(a) and _eager(b) else torch.ops.qcompile.qadd
        return op(a, self.a[0], self.a[1], self.a[2], b, self.b[0], self.b[1], self.b[2], self.output[0],
                  self.output[1], self.output[2], self.clamp_min, self.clamp_max)

    @torch.jit.unused
    def settings(self) -> tuple[int, ...]:
        """``qc_host_add``'s settings, in its order."""
        return (*self.a, *self.b, *self.output, self.clamp_min, self.clamp_max, cpu.ADD_LEFT_SHIFT)

    @torch.jit.unused
    def _kernel_call(self, a: Tensor, b: Tensor):
        """The host kernels' kept call of this add on ``a`` and ``b`` (a function of both), or None where they do
        not take it; kept while the inputs' layout and the settings (plain attributes) stay as they were."""
        if not (_eager(a) and _eager(b) and a.dtype == b.dtype == torch.uint8 and a.shape == b.shape
                and a.stride() == b.stride() and (a.is_contiguous(memory_format=torch.channels_last)
                                                  or a.is_contiguous())):
            return None
        settings = self.settings()
        state = (a.shape, a.stride(), torch.get_num_threads(), host.library() is not None, settings)
        return _keep(self, state, lambda: host.AddCall(a, settings) if state[3] else None)


class QMul(reference.QMul):
    """``a * b`` of two uint8 tensors on their own grids (``b`` may broadcast), onto the output grid."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.ops.qcompile.qmul(a, self.a_zero_point, b, self.b_zero_point, self.output[0], self.output[1],
                                       self.output[2], self.clamp_min, self.clamp_max)


class QLookup(reference.QLookup):
    """An elementwise function of uint8 codes as a 256-entry table (a gather)."""


class QClamp(reference.QClamp):
    """Clamp uint8 codes: ReLU / ReLU6 / hardtanh on a quantized grid, and the M-bit range."""


class QGlobalAvgPool(nn.Module):
    """Mean over H and W of uint8 codes (same grid in and out), rounded half up, kept as N x C x 1 x 1."""

    def forward(self, q: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return torch.ops.qcompile.global_avg_pool(q)
        return self._call(q)

    @torch.jit.unused
    def _call(self, q: Tensor) -> Tensor:
        return (ops.global_avg_pool if _eager(q) else torch.ops.qcompile.global_avg_pool)(q)

    @torch.jit.unused
    def _kernel_call(self, q: Tensor):
        """The host kernel's call of this pooling on ``q`` (uint8, channels last), for a plan, or None."""
        if not (_eager(q) and q.dtype == torch.uint8 and q.dim() == 4 and host.library() is not None
                and q.is_contiguous(memory_format=torch.channels_last)):
            return None
        return host.MeanCall(q.shape)


class QMean(reference.QMean):
    """``x.mean((2, 3))`` of uint8 codes: the global average pool kernel, flattened unless kept."""

    def forward(self, q: Tensor) -> Tensor:
        pooled = torch.ops.qcompile.global_avg_pool(q)
        return pooled if self.keepdim else pooled.flatten(1)


class QAvgPool2d(reference.QAvgPool2d):
    """Window averages of uint8 codes (same grid in and out); see ``torch.ops.qcompile.avg_pool2d``."""

    def forward(self, q: Tensor) -> Tensor:
        return torch.ops.qcompile.avg_pool2d(q, self.zero_point, self.kernel_size, self.stride, self.padding,
                                             self.ceil_mode, self.count_include_pad)


class QCat(reference.QCat):
    """Concatenation of uint8 tensors on their own grids onto the output grid."""

    def forward(self, codes: list[Tensor]) -> Tensor:
        # TorchScript's zip takes no strict=; the stage writes one grid per input
        parts = [torch.ops.qcompile.requantize_codes(q, z, m0, e, self.output_zero_point)
                 for q, z, m0, e in zip(codes, self.zero_points, self.multipliers, self.exponents)]  # noqa: B905
        return torch.cat(parts, self.dim)


def _pair(value) -> list[int]:
    return [value, value] if isinstance(value, int) else list(value)


class QMaxPool2d(nn.Module):
    """Max pooling of uint8 codes (any grid: max commutes with it); see ``torch.ops.qcompile.max_pool2d``."""

    def __init__(self, kernel_size=1, stride=None, padding=0, dilation=1, ceil_mode: bool = False):
        super().__init__()
        self.kernel_size, self.padding, self.dilation = _pair(kernel_size), _pair(padding), _pair(dilation)
        self.stride = _pair(stride) if stride is not None else list(self.kernel_size)
        self.ceil_mode = ceil_mode

    def forward(self, q: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return torch.ops.qcompile.max_pool2d(q, self.kernel_size, self.stride, self.padding, self.dilation,
                                                 self.ceil_mode)
        return self._call(q)

    @torch.jit.unused
    def _call(self, q: Tensor) -> Tensor:
        call = self._kernel_call(q)
        if call is not None:
            return call(q)
        op = ops.max_pool2d if _eager(q) else torch.ops.qcompile.max_pool2d
        return op(q, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    @torch.jit.unused
    def settings(self) -> tuple:
        """The pooling's arguments (its kept call and a plan hold while they stay the same)."""
        return tuple(self.kernel_size), tuple(self.stride), tuple(self.padding), tuple(self.dilation), self.ceil_mode

    @torch.jit.unused
    def _kernel_call(self, q: Tensor):
        """The host kernel's kept call of this pooling on ``q`` (uint8, channels last, as the convolutions write
        it), or None; kept while the input's shape and the settings (plain attributes) stay as they were."""
        if not (_eager(q) and q.dtype == torch.uint8 and q.dim() == 4
                and q.is_contiguous(memory_format=torch.channels_last)):
            return None
        settings = self.settings()
        state = (q.shape, torch.get_num_threads(), host.library() is not None, settings)
        return _keep(self, state, lambda: host.PoolCall(q.shape, ops._pooled_shape(q, *settings), *settings[:4])
                     if state[2] else None)
