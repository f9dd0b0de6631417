"""Quantization facts as typed IR data: how to observe, what was seen, what was chosen.

These records hang off :class:`qcompile.ir.node.QuantAnnotation`. Passes fill
them in order: ``observe`` sets an :class:`ObserverSpec`, ``calibrate`` a
:class:`TensorStats`, ``convert`` the :class:`QParams`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_DTYPE_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "int32": (-(2**31), 2**31 - 1)}


@dataclass(frozen=True)
class ObserverSpec:
    """How a tensor is observed and which integer grid it is mapped to.

    Attributes:
        kind: ``minmax``, ``moving_average``, ``histogram``, ``percentile`` or ``entropy``.
        dtype: Integer container: ``uint8`` or ``int8``.
        symmetric: Zero point fixed at the middle of the range (weights).
        per_channel: One scale per slice along ``axis`` (weights).
        axis: Channel axis for per-channel observers.
        reduce_range: Use one bit less (``[0, 127]`` for uint8), as the x86
            and fbgemm kernels need to avoid overflow in their 16-bit
            intermediate sums.
        averaging_constant: Weight of each new batch for ``moving_average``.
        percentile: Upper percentile kept by ``percentile``.
        bins: Histogram bins for ``histogram``, ``percentile`` and ``entropy``.
    """

    kind: str = "minmax"
    dtype: str = "uint8"
    symmetric: bool = False
    per_channel: bool = False
    axis: int = 0
    reduce_range: bool = False
    averaging_constant: float = 0.01
    percentile: float = 99.99
    bins: int = 2048
    bits: int | None = None  # fewer levels than the container holds (2..8)

    KINDS = ("minmax", "moving_average", "histogram", "percentile", "entropy")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"unknown observer kind {self.kind!r}; choose one of {', '.join(self.KINDS)}")
        if self.dtype not in ("uint8", "int8"):
            raise ValueError(f"unknown dtype {self.dtype!r}; choose uint8 or int8")
        for name, kind in (("symmetric", bool), ("per_channel", bool), ("reduce_range", bool), ("axis", int),
                           ("averaging_constant", float), ("percentile", float), ("bins", int)):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if (kind is bool and not isinstance(value, bool)) or (kind is int and not (number and value == int(value))) \
                    or (kind is float and not number):
                raise ValueError(f"{name} must be {'true or false' if kind is bool else 'a number'}, got {value!r}")
        if not 0 < self.averaging_constant <= 1:
            raise ValueError(f"averaging_constant must be in (0, 1], got {self.averaging_constant}")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.bins < 1:
            raise ValueError(f"bins must be at least 1, got {self.bins}")
        if self.bits is not None and (isinstance(self.bits, bool) or not isinstance(self.bits, int)
                                      or not 2 <= self.bits <= 8):
            raise ValueError(f"bits must be an integer from 2 to 8, got {self.bits!r}")

    @property
    def quant_range(self) -> tuple[int, int]:
        if self.bits is not None and self.bits < 8:
            if self.dtype == "uint8":
                return 0, 2**self.bits - 1
            return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        qmin, qmax = _DTYPE_RANGES[self.dtype]
        if self.reduce_range:
            return (qmin // 2, qmax // 2)
        return qmin, qmax

    def describe(self) -> str:
        qmin, qmax = self.quant_range
        scheme = "sym" if self.symmetric else "affine"
        channel = f" per-channel(axis={self.axis})" if self.per_channel else ""
        return f"{self.kind} {self.dtype}[{qmin},{qmax}] {scheme}{channel}"


@dataclass
class ChannelMoments:
    """:class:`Moments` of each channel (axis 1 of an activation), and each channel's extremes."""

    mean: torch.Tensor
    mad: torch.Tensor
    std: torch.Tensor
    min: torch.Tensor
    max: torch.Tensor


@dataclass
class Moments:
    """Mean, mean absolute deviation and standard deviation of a tensor: what ACIQ's priors and bit
    allocation read (``calibrate`` collects them where a later pass needs them).

    Attributes:
        channels: The same per channel (``None`` for a tensor without channels).
    """

    mean: torch.Tensor
    mad: torch.Tensor
    std: torch.Tensor
    channels: ChannelMoments | None = None

    @staticmethod
    def from_plain(saved: dict) -> Moments:
        """From :func:`dataclasses.asdict` output (a statistics file), or from the flat ``mean`` /
        ``mad_c`` ... dictionary older statistics files hold."""
        if "channels" in saved:
            channels = saved["channels"]
            return Moments(saved["mean"], saved["mad"], saved["std"],
                           ChannelMoments(**channels) if channels is not None else None)
        per_channel = "mad_c" in saved
        return Moments(saved["mean"], saved["mad"], saved["std"],
                       ChannelMoments(saved["mean_c"], saved["mad_c"], saved["std_c"], saved["min_c"],
                                      saved["max_c"]) if per_channel else None)


@dataclass
class TensorStats:
    """What calibration saw of one tensor (per-tensor, or per-channel along ``axis``).

    ``lo``/``hi`` are the range the observer chose (for min/max observers the
    extremes seen; for histogram observers the error-minimising sub-range);
    ``moments`` what ACIQ and bit allocation read, where they run.
    """

    lo: torch.Tensor
    hi: torch.Tensor
    min: torch.Tensor
    max: torch.Tensor
    count: int = 0
    axis: int | None = None
    moments: Moments | None = None

    def describe(self) -> str:
        if self.lo.numel() == 1:
            return f"range=[{float(self.lo):.6g}, {float(self.hi):.6g}]"
        return f"range=[{self.lo.numel()} channels, {float(self.lo.min()):.6g}..{float(self.hi.max()):.6g}]"


@dataclass
class QParams:
    """Scale and zero point of a quantized tensor (tensors of one element, or per channel)."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    dtype: str
    quant_min: int
    quant_max: int
    axis: int | None = None

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def same_grid(self, other: QParams | None) -> bool:
        """Whether ``other`` is the same grid: the same codes mean the same values."""
        return (other is not None and self.dtype == other.dtype and self.axis == other.axis
                and (self.quant_min, self.quant_max) == (other.quant_min, other.quant_max)
                and torch.equal(self.scale, other.scale) and torch.equal(self.zero_point, other.zero_point))

    def describe(self) -> str:
        if self.per_channel:
            return f"{self.dtype} scale=[{self.scale.numel()} channels] axis={self.axis}"
        return f"{self.dtype} scale={float(self.scale):.6g} zp={int(self.zero_point)}"
