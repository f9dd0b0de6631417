"""Lowering: ``nn.Module`` (or an fx GraphModule) -> qcompile IR.

Each fx node becomes one IR node. Leaf modules become MODULE nodes that carry
their constructor arguments and state dict; functions and tensor methods
become FUNCTION / METHOD nodes named by their dotted path; ``get_attr`` reads
become PARAM nodes. Types come from running the traced module once on the
example inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn

from qcompile.errors import LoweringError
from qcompile.frontend.raise_aten import raise_aten
from qcompile.frontend.tracing import stack_location, trace
from qcompile.ir.graph import Graph
from qcompile.ir.modules import ctor_args
from qcompile.ir.node import Node, NodeKind, Ref, SourceInfo
from qcompile.ir.targets import (
    op_name_for_function,
    op_name_for_method,
    op_name_for_module,
    qualified_name,
)
from qcompile.ir.types import TupleType, ValueType, type_of
from qcompile.ir.verify import verify


class _TypeRecorder(fx.Interpreter):
    """Runs a GraphModule and records the IR type of every node's value."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.types: dict[fx.Node, ValueType] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        self.types[n] = type_of(value)
        return value


def lower(
    model: nn.Module,
    example_inputs: Sequence[Any],
) -> Graph:
    """Lower ``model`` to a verified IR graph with the fact ``lowered``.

    Args:
        model: The model; it is put in eval mode. A ``torch.fx.GraphModule``
            (for instance from ``torch.export``'s ``.module()``) is taken as is.
        example_inputs: Inputs for one forward pass; they fix the printed shapes.

    Raises:
        LoweringError: if tracing fails or a module cannot be represented.
    """
    if isinstance(model, fx.GraphModule):
        gm = model  # exported programs refuse .eval(); they are already inference graphs
    else:
        gm = trace(model.eval())
    recorder = _TypeRecorder(gm)
    try:
        with torch.no_grad():
            recorder.run(*example_inputs)
    except Exception as exc:
        shapes = ", ".join(
            str(type_of(x)) for x in example_inputs
        )
        raise LoweringError(
            f"running {type(model).__name__} on example inputs {shapes} failed: "
            f"{type(exc).__name__}: {exc}",
            hint="pass an input shape the model accepts (--input-shape)",
        ) from exc
    graph = Graph(_model_name(model))
    _Converter(gm, graph, recorder.types).convert()
    if any(n.target.startswith("torch.ops.aten.") for n in graph.find(kind=NodeKind.FUNCTION)):
        raise_aten(graph)
    graph.facts.add("lowered")
    verify(graph)
    return graph


def _model_name(model: nn.Module) -> str:
    name = type(model).__name__
    # torch.export's GraphModules have generated class names
    return "ExportedModel" if "GraphModule" in name else name


class _Converter:
    def __init__(self, gm: fx.GraphModule, graph: Graph, types: dict[fx.Node, ValueType]):
        self.gm = gm
        self.graph = graph
        self.types = types
        self.ir: dict[fx.Node, Node] = {}
        self.param_names: dict[int, str] = {}  # id(tensor) -> graph param name

    def convert(self) -> None:
        for fx_node in self.gm.graph.nodes:
            if fx_node.op == "call_module" and fx_node.target == "_guards_fn":
                continue  # torch.export's input-guard check; it computes nothing
            self.ir[fx_node] = self._convert_node(fx_node)

    def _source(self, fx_node: fx.Node) -> SourceInfo:
        location, code = stack_location(fx_node)
        path = fx_node.meta.get("module_path")
        if path is None:
            # torch.export records the module stack instead
            stack = fx_node.meta.get("nn_module_stack") or {}
            path = list(stack.values())[-1][0] if stack else ""
        return SourceInfo(path, location, code)

    def _split_args(self, fx_node: fx.Node) -> tuple[list[Node], tuple, dict]:
        """Replace fx nodes inside args/kwargs by Refs; return (inputs, args, kwargs)."""
        inputs: list[Node] = []

        def to_ref(arg: fx.Node) -> Ref:
            inputs.append(self.ir[arg])
            return Ref(len(inputs) - 1)

        args = fx.node.map_arg(fx_node.args, to_ref)
        kwargs = fx.node.map_arg(fx_node.kwargs, to_ref)
        return inputs, tuple(args), dict(kwargs)

    def _param(self, name: str, tensor: torch.Tensor) -> str:
        key = id(tensor)
        if key not in self.param_names:
            self.param_names[key] = self.graph.add_param(name, tensor.detach())
        return self.param_names[key]

    def _convert_node(self, n: fx.Node) -> Node:
        common = dict(name=n.name, type=self.types.get(n), source=self._source(n))
        if n.op == "placeholder":
            return self.graph.add_node("input", NodeKind.INPUT, target=n.target, **common)
        if n.op == "output":
            inputs, args, kwargs = self._split_args(n)
            out_spec = getattr(self.gm, "_out_spec", None)
            if out_spec is not None:
                # An exported module returns its flat outputs through this spec.
                args = (pytree.tree_unflatten(list(args[0]), out_spec),)
                elements = list(getattr(common["type"], "elements", ()))
                common["type"] = _structure_type(pytree.tree_unflatten(elements, out_spec))
            return self.graph.add_node("output", NodeKind.OUTPUT, inputs, args=args, **common)
        if n.op == "get_attr":
            value = self.gm
            for part in str(n.target).split("."):
                value = getattr(value, part)
            if not isinstance(value, torch.Tensor):
                raise LoweringError(
                    f"attribute '{n.target}' read by the model is a {type(value).__name__}, "
                    "not a tensor",
                    hint="only tensor attributes can be lowered; export the model "
                    "with torch.export and pass the .pt2 archive instead",
                )
            name = self._param(str(n.target), value)
            return self.graph.add_node("param", NodeKind.PARAM, target=name, **common)
        inputs, args, kwargs = self._split_args(n)
        if n.op == "call_module":
            module = self.gm.get_submodule(n.target)
            attrs = ctor_args(module, n.target)
            params = {
                key: self._param(f"{n.target}.{key}", tensor)
                for key, tensor in module.state_dict(keep_vars=True).items()
            }
            return self.graph.add_node(
                op_name_for_module(type(module)),
                NodeKind.MODULE,
                inputs,
                target=qualified_name(type(module)),
                args=args,
                kwargs=kwargs,
                attrs=attrs,
                params=params,
                **common,
            )
        if n.op == "call_function":
            try:
                target = qualified_name(n.target)
            except (ValueError, AttributeError) as exc:
                raise LoweringError(
                    f"the model calls {n.target!r}, which cannot be referred to by name: {exc}",
                    hint="move the function to module level so it can be imported",
                ) from None
            return self.graph.add_node(
                op_name_for_function(n.target),
                NodeKind.FUNCTION,
                inputs,
                target=target,
                args=args,
                kwargs=kwargs,
                **common,
            )
        if n.op == "call_method":
            return self.graph.add_node(
                op_name_for_method(n.target),
                NodeKind.METHOD,
                inputs,
                target=n.target,
                args=args,
                kwargs=kwargs,
                **common,
            )
        raise LoweringError(f"unsupported fx node kind {n.op!r} at {n.name}")


def _structure_type(structure: Any) -> ValueType:
    """The type of a (nested) tuple/list whose leaves are already types."""
    if isinstance(structure, (tuple, list)):
        return TupleType(tuple(_structure_type(s) for s in structure))
    return structure
