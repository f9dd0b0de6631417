"""Naming and resolving the Python callables that nodes refer to.

A node stores its callable as a dotted path (``torch.flatten``,
``torch.nn.functional.relu``, ``operator.add``), so a graph can be printed,
saved and compared as text, and codegen can write the same call back out.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import operator
import re
from typing import Any

import torch

# Modules whose functions appear under a friendlier public path.
_MODULE_ALIASES = {
    "_operator": "operator",
    "torch._C._nn": "torch.nn.functional",
    "torch._C._VariableFunctions": "torch",
    "torch._C._fft": "torch.fft",
    "torch._C._linalg": "torch.linalg",
    "torch._C._special": "torch.special",
}


def qualified_name(obj: Any) -> str:
    """Dotted path under which ``obj`` can be imported again.

    Prefers the public location: ``torch.nn.Conv2d`` rather than
    ``torch.nn.modules.conv.Conv2d``, ``operator.add`` rather than
    ``_operator.add``.
    """
    if isinstance(obj, torch._ops.OpOverload):
        return f"torch.ops.{obj.namespace}.{obj._opname}.{obj._overloadname}"
    if isinstance(obj, torch._ops.OpOverloadPacket):
        return f"torch.ops.{obj._qualified_op_name.replace('::', '.')}"
    if getattr(builtins, getattr(obj, "__name__", ""), None) is obj:
        return f"builtins.{obj.__name__}"
    name = obj.__name__
    module = getattr(obj, "__module__", None) or ""
    if module in _MODULE_ALIASES:
        module = _MODULE_ALIASES[module]
        public = importlib.import_module(module)
        if getattr(public, name, None) is not obj:  # torch.special.i0 is torch._C._special.special_i0
            name = next((attr for attr, value in vars(public).items() if value is obj), name)
    if isinstance(obj, type) and issubclass(obj, torch.nn.Module):
        if getattr(torch.nn, name, None) is obj:
            return f"torch.nn.{name}"
    for public in ("torch", "torch.nn.functional"):
        if getattr(importlib.import_module(public), name, None) is obj:
            return f"{public}.{name}"
    qual = getattr(obj, "__qualname__", name) if name == obj.__name__ else name
    if "<locals>" in qual:
        raise ValueError(f"{qual} is defined inside a function and cannot be referred to by name")
    if "." not in qual:
        # The shortest package that re-exports it: torchvision.ops.stochastic_depth
        # rather than torchvision.ops.stochastic_depth.stochastic_depth (where the
        # package attribute shadows the submodule of the same name).
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            package = ".".join(parts[:i])
            try:
                if getattr(importlib.import_module(package), name, None) is obj:
                    return f"{package}.{name}"
            except ImportError:
                continue
    return f"{module}.{qual}"


@functools.cache
def resolve_target(path: str) -> Any:
    """Import the object named by a dotted ``path`` (inverse of :func:`qualified_name`)."""
    if path.startswith("torch.ops."):
        obj: Any = torch.ops
        for part in path.split(".")[2:]:
            obj = getattr(obj, part)
        return obj
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot resolve {path!r}")


_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_ACRONYM_OPS = {
    "ReLU": "relu",
    "ReLU6": "relu6",
    "LeakyReLU": "leaky_relu",
    "PReLU": "prelu",
    "RReLU": "rrelu",
    "SiLU": "silu",
    "GELU": "gelu",
    "ELU": "elu",
    "SELU": "selu",
    "CELU": "celu",
    "GLU": "glu",
}


def op_name_for_module(cls: type) -> str:
    """Canonical op name of a module class (``BatchNorm2d`` -> ``batch_norm2d``)."""
    name = cls.__name__
    if name in _ACRONYM_OPS:
        return _ACRONYM_OPS[name]
    return _CAMEL_BOUNDARY.sub("_", name).lower()


# Functions that are the same op under another name.
_FUNCTION_OP_ALIASES = {
    "truediv": "div",
    "floordiv": "floor_divide",
    "iadd": "add",
    "imul": "mul",
}


def op_name_for_function(fn: Any) -> str:
    """Canonical op name of a function (``torch.nn.functional.relu`` -> ``relu``)."""
    if isinstance(fn, torch._ops.OpOverload):
        name = fn._opname
    elif isinstance(fn, torch._ops.OpOverloadPacket):
        name = fn._qualified_op_name.split("::")[-1]
    else:
        name = fn.__name__
    return _FUNCTION_OP_ALIASES.get(name, name)


def op_name_for_method(method: str) -> str:
    """Canonical op name of a tensor method (``add`` -> ``add``)."""
    return _FUNCTION_OP_ALIASES.get(method, method)


# Python operators that codegen writes as infix expressions.
INFIX_OPERATORS: dict[Any, str] = {
    operator.add: "+",
    operator.sub: "-",
    operator.mul: "*",
    operator.truediv: "/",
    operator.floordiv: "//",
    operator.mod: "%",
    operator.pow: "**",
    operator.matmul: "@",
    operator.eq: "==",
    operator.ne: "!=",
    operator.lt: "<",
    operator.le: "<=",
    operator.gt: ">",
    operator.ge: ">=",
    operator.and_: "&",
    operator.or_: "|",
}
