"""Nodes of the IR graph.

A node is one operation producing one value. Its inputs are edges of the
graph (see :class:`qcompile.ir.graph.Graph`); inside ``args`` / ``kwargs`` an
input appears as ``Ref(i)``, the value arriving on input port ``i``. So
``torch.flatten(x, 1)`` is a node with one input and ``args=(Ref(0), 1)``, and
``x + x`` has two input ports fed by the same value.

Quantization facts live in typed fields (``quant``) that passes fill in; the
free ``meta`` dict is for user passes only, never a contract between passes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from qcompile.ir.quant_types import ObserverSpec, QParams, TensorStats
from qcompile.ir.types import NoneType, ValueType


class NodeKind(enum.Enum):
    """Where a node's computation is defined."""

    INPUT = "input"  # a model input
    OUTPUT = "output"  # the model's result; exactly one per graph
    PARAM = "param"  # a tensor held by the graph (parameter, buffer, constant)
    MODULE = "module"  # a torch.nn leaf module rebuilt from `attrs` and `params`
    FUNCTION = "function"  # a Python/torch function named by `target`
    METHOD = "method"  # a method `target` called on the first argument


@dataclass(frozen=True)
class Ref:
    """Placeholder inside ``args``/``kwargs`` for the value on input port ``index``."""

    index: int

    def __repr__(self) -> str:
        return f"Ref({self.index})"


@dataclass(frozen=True)
class SourceInfo:
    """Where a node came from in the user's model."""

    module_path: str = ""  # e.g. "layer1.0.conv1"
    location: str = ""  # e.g. "torchvision/models/resnet.py:92"
    code: str = ""  # the source line, stripped

    def describe(self) -> str:
        parts = []
        if self.module_path:
            parts.append(f"module '{self.module_path}'")
        if self.location:
            parts.append(self.location)
        text = ", ".join(parts)
        if self.code:
            text += f": {self.code}"
        return text


@dataclass
class QuantAnnotation:
    """Quantization facts about a node, filled in by passes.

    The plain fields describe the node's output; the ``weight_`` fields its
    weight parameter. Each stays ``None`` until the pass that provides it has
    run, and the printer shows only what is set.

    Attributes:
        mode: How the node is quantized: ``static`` (int8 in, int8 out),
            ``dynamic`` (int8 weights, activations quantized at run time),
            ``qat`` (fake-quantized for training); ``None`` while float.
        observer: How the output is observed (set by ``observe``).
        stats: What calibration saw of the output (set by ``calibrate``).
        qparams: Scale and zero point chosen for the output (set by ``convert``).
        shares: Name of the node whose output quantization this output reuses
            (ops like max-pool or flatten that cannot change the grid).
        clip: A clip range chosen analytically, overriding ``stats``: two
            floats, or two tensors with one value per channel (``simulate`` only).
        bits: Bit width of the output, when not the container's full width.
        channel_bits: Bit width per channel (bit allocation; ``simulate`` only).
        weight_bits: Bit width per output channel of the weight.
        absorbs: Name of a node that a pass erased into this one, whose value
            this node now produces (a clamp folded into the output stage of
            the conv before it), so that tools comparing this graph with
            another one match the two values.
        weight_observer, weight_stats, weight_qparams: The same for the weight.
        float_reason: Why a node outside the quantized region stays float
            (set by ``stubs``: no quantized form, skipped by the config, ...).
        float_weight: The float weight a dynamically quantized linear's int8
            one was quantized from (set by ``dynamic``), for exports that
            quantize it again: onnxruntime's fused kernels take 7-bit weights
            (:mod:`qcompile.onnx.fused_dynamic`). Held in memory only.
    """

    mode: str | None = None
    observer: ObserverSpec | None = None
    stats: TensorStats | None = None
    qparams: QParams | None = None
    shares: str | None = None
    clip: tuple[float, float] | tuple[torch.Tensor, torch.Tensor] | None = None
    bits: int | None = None
    channel_bits: torch.Tensor | None = None
    weight_observer: ObserverSpec | None = None
    weight_stats: TensorStats | None = None
    weight_qparams: QParams | None = None
    weight_bits: torch.Tensor | None = None
    absorbs: str | None = None
    float_reason: str | None = None
    float_weight: torch.Tensor | None = None

    def is_empty(self) -> bool:
        return all(v is None for v in vars(self).values())

    def describe(self) -> str:
        out = [f"mode={self.mode}"] if self.mode is not None else []
        if self.observer is not None:
            out.append(f"obs={self.observer.describe()}")
        if self.shares is not None:
            out.append(f"shares=%{self.shares}")
        if self.stats is not None:
            out.append(self.stats.describe())
        if self.clip is not None:
            out.append(_describe_clip(self.clip))
        if self.bits is not None:
            out.append(f"bits={self.bits}")
        if self.channel_bits is not None:
            out.append(f"bits={_describe_bits(self.channel_bits)}")
        if self.qparams is not None:
            out.append(self.qparams.describe())
        if self.absorbs is not None:
            out.append(f"absorbs=%{self.absorbs}")
        if self.float_reason is not None:
            out.append(f"float: {self.float_reason}")
        weight = []
        if self.weight_observer is not None:
            weight.append(f"obs={self.weight_observer.describe()}")
        if self.weight_stats is not None:
            weight.append(self.weight_stats.describe())
        if self.weight_qparams is not None:
            weight.append(self.weight_qparams.describe())
        if self.weight_bits is not None:
            weight.append(f"bits={_describe_bits(self.weight_bits)}")
        if weight:
            out.append("| weight: " + " ".join(weight))
        return " ".join(out)


def _describe_clip(clip) -> str:
    lo, hi = clip
    if isinstance(lo, torch.Tensor) and lo.numel() > 1:
        return (f"clip=[{lo.numel()} channels, lo {float(lo.min()):.4g}..{float(lo.max()):.4g}, "
                f"hi {float(hi.min()):.4g}..{float(hi.max()):.4g}]")
    return f"clip=[{float(lo):.6g}, {float(hi):.6g}]"


def _describe_bits(bits: torch.Tensor) -> str:
    return (f"[{bits.numel()} channels, {int(bits.min())}..{int(bits.max())}, "
            f"mean {float(bits.float().mean()):.2f}]")


@dataclass(eq=False)
class Node:
    """One operation of the graph. Create nodes through :class:`Graph`, not directly.

    Attributes:
        name: Unique, stable name; printed as ``%name``.
        op: Canonical operation name that passes match on (``conv2d``, ``add``).
        kind: Where the computation is defined (see :class:`NodeKind`).
        target: For MODULE, the module class path (``torch.nn.Conv2d``); for
            FUNCTION, the function's path (``torch.flatten``); for METHOD, the
            method name (``view``); for PARAM, the parameter name; for INPUT,
            the argument name.
        args: Positional arguments, with ``Ref(i)`` for input port ``i``.
        kwargs: Keyword arguments, likewise.
        attrs: Constructor arguments of a MODULE (for other kinds, op-level
            attributes that lowering or passes set).
        act: The activation fused into the op, applied to its output
            (``relu``, ``relu6``, ...; set by ``fuse``), or None. A backend whose
            kernel computes it clears it when it lowers the node.
        norm_prior: The per-channel (mean, standard deviation) of the output
            before ``act`` that a BatchNorm folded into the node predicts (its
            shift and the magnitude of its scale; set by ``fuse``, kept up to
            date by passes that rescale the node's output channels). Data-free
            passes read it in place of statistics.
        params: For MODULE, state-dict key -> graph parameter name.
        type: Type of the value the node produces.
        source: Where the node came from in the user's model.
        quant: Quantization facts, set by quantization passes.
        meta: Free-form data for user passes; never read by built-in passes.
    """

    name: str
    op: str
    kind: NodeKind
    target: str = ""
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    act: str | None = None
    norm_prior: tuple[torch.Tensor, torch.Tensor] | None = None
    params: dict[str, str] = field(default_factory=dict)
    type: ValueType = field(default_factory=NoneType)
    source: SourceInfo = field(default_factory=SourceInfo)
    quant: QuantAnnotation = field(default_factory=QuantAnnotation)
    meta: dict[str, Any] = field(default_factory=dict)
    # Ordering key managed by the graph; tuples sort lexicographically so that
    # a node inserted after another gets a key between it and its successor.
    _order: tuple[int, ...] = (0,)

    def __repr__(self) -> str:
        return f"<Node %{self.name} = {self.op}>"


def map_refs(tree: Any, fn: Callable[[Ref], Any]) -> Any:
    """Return ``tree`` with every :class:`Ref` replaced by ``fn(ref)``.

    Walks tuples, lists, dicts and slices, the containers torch.fx allows in
    arguments.
    """
    if isinstance(tree, Ref):
        return fn(tree)
    if isinstance(tree, tuple):
        return tuple(map_refs(t, fn) for t in tree)
    if isinstance(tree, list):
        return [map_refs(t, fn) for t in tree]
    if isinstance(tree, dict):
        return {k: map_refs(v, fn) for k, v in tree.items()}
    if isinstance(tree, slice):
        return slice(map_refs(tree.start, fn), map_refs(tree.stop, fn), map_refs(tree.step, fn))
    return tree


def collect_refs(tree: Any) -> list[Ref]:
    """All :class:`Ref` objects in ``tree``, in order of appearance."""
    found: list[Ref] = []

    def visit(ref: Ref) -> Ref:
        found.append(ref)
        return ref

    map_refs(tree, visit)
    return found
