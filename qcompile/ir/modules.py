"""Leaf modules as data: constructor arguments in, an ``nn.Module`` out.

A MODULE node stores the class path (``torch.nn.Conv2d``), its constructor
arguments in ``attrs`` and its state dict as graph parameters. The same three
things rebuild the module for the interpreter and are written out by codegen,
so both always agree on what a node computes.

Constructor arguments are read back from a live module through the
constructor's signature: every torch.nn module stores its settings under the
names it was given (``stride``, ``eps``, ``inplace``...). Lowering rebuilds each
module from what was read and compares it with the original, so a module whose
settings cannot be recovered is refused up front instead of computing
something else later.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from qcompile.errors import LoweringError
from qcompile.ir.targets import resolve_target

# Activations a pass may fuse into a node's output, by ``Node.act`` value (see passes/fuse.py).
FUSED_ACTIVATIONS = {
    "relu": "torch.nn.functional.relu",
    "relu6": "torch.nn.functional.relu6",
}

_INPLACE = re.compile(r"(, )?inplace=(True|False)")
_SKIPPED_CTOR_PARAMS = {"self", "_weight", "_freeze"}
_FACTORY_KWARGS = {"device", "dtype"}  # skipped where they only pick where/how tensors are made


def _init_parameters(cls: type) -> list[inspect.Parameter]:
    """The named constructor parameters, through constructors that pass ``**kwargs`` on.

    ``nn.LSTM.__init__`` only takes ``*args, **kwargs`` and passes them on to
    ``nn.RNNBase.__init__``, whose signature is the one that matters. A
    constructor that takes keyword-only parameters of its own besides
    ``*args, **kwargs`` (the QAT convolutions' ``weight_per_channel``) has
    its own and the next one's. One that takes named parameters and only
    ``**kwargs`` passes on what it chooses, so its own are all there is.
    """
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        sig = inspect.signature(klass.__init__)
        named = [
            p
            for p in sig.parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"
        ]
        for p in named:
            found.setdefault(p.name, p)
        kinds = {p.kind for p in sig.parameters.values()}
        passes_on = {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD} <= kinds
        if (named and not passes_on) or klass is nn.Module:
            break
    return list(found.values())


@functools.cache
def ctor_defaults(cls: type) -> dict[str, Any]:
    """Constructor parameter -> default (``inspect.Parameter.empty`` if required)."""
    # nn.LSTM passes RNNBase its own `mode` ("LSTM"); EmbeddingBag's and Upsample's `mode` is a setting
    skipped = _SKIPPED_CTOR_PARAMS | ({"mode"} if issubclass(cls, nn.RNNBase) else set())
    return {
        p.name: p.default
        for p in _init_parameters(cls)
        if p.name not in skipped and not (p.name in _FACTORY_KWARGS and p.default is None)
    }


def _read_ctor_value(module: nn.Module, name: str, default: Any) -> Any:
    if name == "inplace":
        # In-place activations would overwrite values other nodes still read
        # (observers, error traces); the graph is functional.
        return False
    if isinstance(module, nn.MultiheadAttention):
        if name == "bias":
            return module.in_proj_bias is not None
        if name == "add_bias_kv":
            return module.bias_k is not None
    if not hasattr(module, name):
        if default is inspect.Parameter.empty:
            raise AttributeError(name)
        return default
    value = getattr(module, name)
    if isinstance(default, bool) and (value is None or isinstance(value, torch.Tensor)):
        # e.g. Conv2d(bias=True) is stored as the bias Parameter (or None)
        return value is not None
    if isinstance(value, torch.Tensor):
        raise AttributeError(name)
    return value


def ctor_args(module: nn.Module, path: str = "") -> dict[str, Any]:
    """Constructor arguments that rebuild ``module``, checked by rebuilding it.

    Raises:
        LoweringError: if the settings cannot be read back faithfully.
    """
    cls = type(module)
    args: dict[str, Any] = {}
    for name, default in ctor_defaults(cls).items():
        try:
            args[name] = _read_ctor_value(module, name, default)
        except AttributeError:
            raise LoweringError(
                f"cannot read constructor argument '{name}' of {cls.__name__} at "
                f"module '{path}'",
                hint="lower this module's parent with a traceable forward, or "
                "report the module type so it can be supported",
            ) from None
    rebuilt = build_module(cls, args, dict(module.state_dict()), path=path)
    expected = _normalized_repr(module)
    if _normalized_repr(rebuilt) != expected:
        raise LoweringError(
            f"{cls.__name__} at module '{path}' cannot be rebuilt from its settings: "
            f"got {rebuilt!r}, expected {expected}",
            hint="report the module type so it can be supported",
        )
    return args


def _normalized_repr(module: nn.Module) -> str:
    # `inplace` is dropped on purpose (see _read_ctor_value); ReLU prints
    # "ReLU(inplace=True)" but plain "ReLU()" when it is off.
    return _INPLACE.sub("", repr(module))


def build_module(
    cls: type | str, attrs: dict[str, Any], state: dict[str, torch.Tensor], path: str = ""
) -> nn.Module:
    """Construct ``cls(**ctor attrs)``, load ``state`` and switch to eval mode.

    The module is first built on the meta device and given ``state``'s tensors
    directly (no random initialisation of weights that are overwritten at
    once: that dominates lowering time for VGG's 100M-parameter layers). Modules
    that cannot be built that way (quantized ones with packed weights) are built
    normally.
    """
    if isinstance(cls, str):
        cls = resolve_target(cls)
    # Only what differs from the defaults: some constructors refuse arguments
    # they do not use even at their default value (GRU and proj_size=0).
    kwargs = non_default_ctor_args(cls, attrs)
    builder = _BUILDERS.get(cls)
    if builder is not None:
        return builder(cls, kwargs, state).eval()
    module = _build_on_meta(cls, kwargs, state)
    if module is None:
        module = cls(**kwargs)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise LoweringError(
                f"the parameters of module '{path}' ({cls.__name__}) do not fit it: {exc}"
            ) from None
    return module.eval()


Builder = Callable[[type, dict[str, Any], dict[str, torch.Tensor]], nn.Module]
_BUILDERS: dict[type, Builder] = {}


def register_builder(*classes: type) -> Callable[[Builder], Builder]:
    """Build ``classes`` with a function instead of ``cls(**ctor)`` + ``load_state_dict``.

    For modules whose state dict is not a plain set of tensors (quantized
    Linear keeps packed weights); the graph still stores plain tensors.
    """

    def wrap(fn: Builder) -> Builder:
        for cls in classes:
            _BUILDERS[cls] = fn
        return fn

    return wrap


def _build_on_meta(cls: type, kwargs: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module | None:
    from qcompile.backends.torch_ao.tensors import is_torch_quantized

    if any(is_torch_quantized(t) for t in state.values()):
        return None
    try:
        with torch.device("meta"):
            module = cls(**kwargs)
        module.load_state_dict(state, strict=True, assign=True)
    except Exception:
        return None
    leftovers = [t for t in list(module.parameters()) + list(module.buffers()) if t.is_meta]
    return None if leftovers else module


def non_default_ctor_args(cls: type, attrs: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments in ``attrs`` that differ from their defaults."""
    defaults = ctor_defaults(cls)
    shown = {}
    for name, value in attrs.items():
        if name not in defaults:
            continue
        default = defaults[name]
        if default is inspect.Parameter.empty or not _same(value, default):
            shown[name] = value
    return shown


def required_ctor_params(cls: type) -> list[str]:
    """Constructor parameters without a default, in signature order."""
    return [n for n, d in ctor_defaults(cls).items() if d is inspect.Parameter.empty]


def _same(value: Any, default: Any) -> bool:
    # Conv2d stores stride=1 as (1, 1); treat both spellings as the default.
    if isinstance(value, tuple) and not isinstance(default, tuple):
        return all(v == default for v in value)
    try:
        return bool(value == default) and type(value) is type(default)
    except Exception:
        return False


# Builders for torch's quantized modules register themselves here.
from qcompile.backends.torch_ao import packed_modules  # noqa: E402, F401
