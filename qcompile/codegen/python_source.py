"""Codegen: a graph -> one readable ``nn.Module`` in a Python source file.

The emitted ``forward`` reads like hand-written eager code::

    def forward(self, x):
        conv1 = F.relu(self.conv1(x))
        maxpool = self.maxpool(conv1)
        ...
        flatten = torch.flatten(avgpool, 1)
        fc = self.fc(flatten)
        return fc

Leaf modules become named submodules built in ``__init__`` (constructor
arguments that equal their defaults are left out); tensors the graph reads
directly become parameters or buffers. The weights go to a separate state-dict
file, loaded by the ``load()`` function the source file defines.
"""

from __future__ import annotations

import math
import operator
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from qcompile.backends.torch_ao import int4
from qcompile.backends.torch_ao.tensors import owned
from qcompile.backends.torch_ao.warnings import MESSAGES
from qcompile.codegen import int4_codes
from qcompile.ir.graph import Graph, sanitize_name
from qcompile.ir.modules import FUSED_ACTIVATIONS, build_module, non_default_ctor_args, required_ctor_params
from qcompile.ir.node import Node, NodeKind, map_refs
from qcompile.ir.targets import INFIX_OPERATORS, resolve_target

_RESERVED = {"self", "torch", "nn", "F", "operator", "math", "builtins"}


@dataclass
class EmittedModel:
    """Source text and weights of an emitted module."""

    class_name: str
    source: str
    state_dict: dict[str, torch.Tensor]
    param_map: dict[str, str]  # state-dict key -> graph parameter it holds


class _Code:
    """A Python expression; keeps constants and references apart from raw code."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def python_literal(value: Any) -> str:
    """Source text that evaluates back to ``value`` exactly."""
    if isinstance(value, _Code):
        return value.text
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return f"float('{value}')"
        return repr(value)
    if isinstance(value, tuple):
        inner = ", ".join(python_literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(python_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {python_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, slice):
        return f"slice({python_literal(value.start)}, {python_literal(value.stop)}, {python_literal(value.step)})"
    if isinstance(value, torch.device):
        return f"torch.device({str(value)!r})"
    if value is Ellipsis:
        return "..."
    if isinstance(value, (torch.dtype, torch.memory_format, torch.layout)):
        return str(value)
    text = repr(value)
    try:
        if eval(text, {"torch": torch}) == value:  # noqa: S307 - our own repr text
            return text
    except Exception:
        pass
    raise ValueError(f"cannot write {value!r} ({type(value).__name__}) as Python source")


def _subscript(index: Any) -> str:
    """``x[...]`` index text: slices as ``a:b``, tuples without parentheses."""
    if isinstance(index, slice):
        parts = [index.start, index.stop] + ([index.step] if index.step is not None else [])
        return ":".join("" if p is None else python_literal(p) for p in parts)
    if isinstance(index, tuple) and index:
        return ", ".join(_subscript(i) for i in index)
    return python_literal(index)


class _Emitter:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.var: dict[str, str] = {}
        self.imports: set[str] = {"import torch", "from torch import nn"}
        self.init_lines: list[str] = []
        self.forward_lines: list[str] = []
        # Mirrors the emitted module's attributes, so its state_dict() carries
        # the version metadata quantized modules need when loading.
        self.container = torch.nn.Module()
        self.param_map: dict[str, str] = {}
        self.attr_names: set[str] = set()
        self.module_attrs: dict[tuple, str] = {}
        self.param_attrs: dict[str, str] = {}

    def _unique_attr(self, raw: str) -> str:
        base = sanitize_name(raw)
        if base in _RESERVED:
            base += "_"
        name, i = base, 1
        while name in self.attr_names or hasattr(torch.nn.Module, name):
            name = f"{base}_{i}"
            i += 1
        self.attr_names.add(name)
        return name

    def _variable(self, node: Node) -> str:
        name = node.name if node.name not in _RESERVED else node.name + "_"
        self.var[node.name] = name
        return name

    def _callable(self, path: str) -> str:
        """Source text naming the callable at ``path``, adding its import."""
        if path.startswith("torch.nn.") and path.count(".") == 2:
            return "nn." + path.removeprefix("torch.nn.")
        if path.startswith("torch.nn.functional."):
            self.imports.add("import torch.nn.functional as F")
            return "F." + path.removeprefix("torch.nn.functional.")
        if path.startswith("torch.ops.aten.") and path.count(".") == 4:
            # The overload packet (torch.ops.aten.transpose) picks the overload
            # (.int) from the arguments, as the named overload would; TorchScript
            # can compile only the packet.
            return path.rpartition(".")[0]
        if path.startswith("torch."):
            return path
        if path.startswith("builtins."):
            return path.removeprefix("builtins.")
        module = path.rpartition(".")[0]
        self.imports.add(f"import {module}")
        return path

    def _module_attr(self, node: Node) -> str:
        cls = resolve_target(node.target)
        ctor = non_default_ctor_args(cls, node.attrs)
        # A module called twice (ResNet's shared ReLU) stays one attribute.
        key = (
            node.source.module_path,
            node.target,
            repr(sorted(ctor.items())),
            tuple(sorted(node.params.items())),
        )
        if key in self.module_attrs:
            return self.module_attrs[key]
        attr = self._unique_attr(node.source.module_path or node.name)
        required = required_ctor_params(cls)
        positional = [python_literal(ctor.pop(name)) for name in required if name in ctor]
        keywords = [f"{k}={python_literal(v)}" for k, v in ctor.items()]
        self.init_lines.append(
            f"self.{attr} = {self._callable(node.target)}({', '.join(positional + keywords)})"
        )
        # The module's own state dict: for quantized modules it holds packed
        # weights and constructor-set buffers, not just the graph's tensors.
        state = {key: self.graph.params[p] for key, p in node.params.items()}
        self.param_map.update({f"{attr}.{key}": p for key, p in node.params.items()})
        self.container.add_module(attr, build_module(cls, node.attrs, state, path=node.source.module_path))
        self.module_attrs[key] = attr
        return attr

    def _param_attr(self, node: Node) -> str:
        if node.target in self.param_attrs:
            return self.param_attrs[node.target]
        tensor = self.graph.params[node.target]
        attr = self._unique_attr(node.target)
        shape = ", ".join(str(d) for d in tensor.shape)
        empty = f"torch.empty(({shape}{',' if tensor.dim() == 1 else ''}), dtype={tensor.dtype})"
        if tensor.is_floating_point():
            self.init_lines.append(f"self.{attr} = nn.Parameter({empty})")
        else:
            self.init_lines.append(f"self.register_buffer({attr!r}, {empty})")
        if tensor.is_floating_point():
            self.container.register_parameter(attr, torch.nn.Parameter(tensor, requires_grad=False))
        else:
            self.container.register_buffer(attr, tensor)
        self.param_attrs[node.target] = attr
        self.param_map[attr] = node.target
        return attr

    def _arguments(self, node: Node) -> tuple[tuple, dict]:
        """``node``'s args and kwargs with each input replaced by its variable name."""
        refs = [_Code(self.var[p.name]) for p in self.graph.inputs(node)]
        return map_refs(node.args, lambda r: refs[r.index]), map_refs(node.kwargs, lambda r: refs[r.index])

    def _expression(self, node: Node) -> str:
        expr = self._call(node)
        act = node.act
        return f"{self._callable(FUSED_ACTIVATIONS[act])}({expr})" if act else expr

    def _call(self, node: Node) -> str:
        args, kwargs = self._arguments(node)
        arg_text = ", ".join(
            [python_literal(a) for a in args] + [f"{k}={python_literal(v)}" for k, v in kwargs.items()]
        )
        if node.kind == NodeKind.PARAM:
            return f"self.{self._param_attr(node)}"
        if node.kind == NodeKind.MODULE:
            return f"self.{self._module_attr(node)}({arg_text})"
        if node.kind == NodeKind.METHOD:
            rest = ", ".join(
                [python_literal(a) for a in args[1:]] + [f"{k}={python_literal(v)}" for k, v in kwargs.items()]
            )
            return f"{python_literal(args[0])}.{node.target}({rest})"
        fn = resolve_target(node.target)
        if fn is operator.getitem and len(args) == 2 and not kwargs:
            return f"{python_literal(args[0])}[{_subscript(args[1])}]"
        if fn in INFIX_OPERATORS and len(args) == 2 and not kwargs:
            return f"{python_literal(args[0])} {INFIX_OPERATORS[fn]} {python_literal(args[1])}"
        return f"{self._callable(node.target)}({arg_text})"

    def emit(self) -> EmittedModel:
        inputs = []
        result = "None"
        for node in self.graph.nodes():
            if node.kind == NodeKind.INPUT:
                inputs.append(self._variable(node))
                continue
            if node.kind == NodeKind.OUTPUT:
                result = python_literal(self._arguments(node)[0][0])
                continue
            expr = self._expression(node)
            self.forward_lines.append(f"{self._variable(node)} = {expr}")
        class_name = sanitize_name(self.graph.name)
        if class_name in _RESERVED:
            class_name += "_"
        facts = ", ".join(sorted(self.graph.facts)) or "none"
        engine = self.graph.attrs.get("engine")
        # quantized weights are packed for one engine when the model is built
        engine_line = f"    torch.backends.quantized.engine = {engine!r}\n" if engine else ""
        state = self.container.state_dict()
        for key, value in state.items():
            state[key] = _owned(value)
        load_call = "torch.load(weights, map_location=map_location, weights_only=True)"
        packed = int4.pack(dict(state))
        helpers = ""
        if int4.contains_packed(packed):
            # 4-bit weights travel two per byte; model.py unpacks them on load
            metadata = getattr(state, "_metadata", None)
            state = OrderedDict(packed)
            if metadata is not None:
                state._metadata = metadata
            load_call = f"_unpack_int4({load_call})"
            helpers = int4.UNPACK_SOURCE
        codes = int4_codes.pack(state)  # qcompile's kernels: plain int8 codes of 4-bit weights
        if codes is not None:
            state = codes
            load_call = f"_unpack_int4_codes({load_call})"
            helpers += int4_codes.UNPACK_SOURCE
        if any(not isinstance(v, torch.Tensor) for v in state.values()):
            # packed weights of dynamic LSTM/GRU are torch ScriptObjects, which the
            # safe loader accepts only when allowed explicitly
            load_block = ("    with torch.serialization.safe_globals([torch.ScriptObject]):\n"
                          f"        model.load_state_dict({load_call})\n")
        else:
            load_block = f"    model.load_state_dict({load_call})\n"
        if engine:
            # int8 state: torch 2.14 warns that its quantized tensors are deprecated when they are
            # built or loaded; the model runs as before, and its user cannot act on the warning
            self.imports.add("import warnings")
            body = [f"model = {class_name}()"] + [line[4:] for line in load_block.splitlines()]
            filters = [f"warnings.filterwarnings(\"ignore\", message={f'.*{text}.*'!r})" for text in MESSAGES]
            lines = ["with warnings.catch_warnings():",
                     "    # torch deprecates its quantized tensors and modules (the int8 weights); they work as before",
                     *(f"    {line}" for line in filters + body)]
            load_block = "".join(f"    {line}\n" for line in lines)
            model_line = ""
        else:
            model_line = f"    model = {class_name}()\n"
        # a model on qcompile's kernels runs a whole call as one plan of kernel calls (kernels/plan.py)
        base = "qcompile.kernels.modules.KernelModel" if "import qcompile.kernels.modules" in self.imports else "nn.Module"
        body_init = "\n".join(f"        {line}" for line in self.init_lines) or "        pass"
        body_fwd = "\n".join(f"        {line}" for line in self.forward_lines)
        source = f'''"""{class_name}, emitted by qcompile (graph facts: {facts}).

Load it with its weights:

    from model import load
    model = load("weights.pt")
"""

{chr(10).join(sorted(self.imports, key=lambda line: (line.startswith('from'), line)))}


class {class_name}({base}):
    def __init__(self):
        super().__init__()
{body_init}

    def forward(self, {", ".join(inputs)}):
{body_fwd}
        return {result}


def load(weights="weights.pt", map_location="cpu"):
    """Build the model and load its weights (a state-dict file)."""
{engine_line}{model_line}{load_block}    return model.eval()
{helpers}'''
        return EmittedModel(class_name, source, state, dict(self.param_map))


def _owned(value: Any) -> Any:
    """``value``, or a copy that owns its row scales: torch 2.14's quantized Embedding hands out a weight
    whose per-row scales and zero points live in its packed table and dangle once the module is freed."""
    return owned(value)


def emit_python(graph: Graph) -> EmittedModel:
    """Emit ``graph`` as Python source plus a state dict."""
    return _Emitter(graph).emit()
