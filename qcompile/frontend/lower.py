"""Lowering: ``nn.Module`` (or an fx GraphModule) -> qcompile IR.

Each fx node becomes one IR node. Leaf modules become MODULE nodes that carry
their constructor arguments and state dict; functions and tensor methods
become FUNCTION / METHOD nodes named by their dotted path; ``get_attr`` reads
become PARAM nodes. Types come from running the traced module once on the
example inputs.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn

from qcompile.errors import LoweringError, QCompileError
from qcompile.frontend.dynamic_axes import (
    AxesSpec,
    PerInput,
    describe,
    export_shapes,
    input_names,
    recorded,
    resolve,
)
from qcompile.frontend.functionalize import functional
from qcompile.frontend.raise_aten import raise_aten
from qcompile.frontend.shape_checks import fold_shape_checks
from qcompile.frontend.tracing import graph_module_names, stack_location, trace
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
        self.current: fx.Node | None = None  # the node running (the one that failed, after an error)

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        value = super().run_node(n)
        self.types[n] = type_of(value)
        return value


FRONTENDS = ("fx", "export")


def lower(
    model: nn.Module,
    example_inputs: Sequence[Any],
    notes: list[str] | None = None,
    frontend: str = "fx",
    dynamic_axes: AxesSpec = (),
) -> Graph:
    """Lower ``model`` to a verified IR graph with the fact ``lowered``.

    A module is traced with torch.fx first. If fx cannot trace it (control flow
    on tensor values) or a leaf module cannot be represented (torch.nn
    containers such as ``nn.TransformerEncoder``), the module is lowered
    through ``torch.export`` instead, with the batch dimension kept dynamic,
    and a line saying so is appended to ``notes``.

    Args:
        model: The model; it is put in eval mode. A ``torch.fx.GraphModule``
            (for instance from ``torch.export``'s ``.module()``) is taken as is.
        example_inputs: Inputs for one forward pass; they fix the printed shapes.
        notes: Receives what the user should know about how the model was lowered.
        frontend: ``fx`` (torch.export only when fx fails) or ``export``
            (always torch.export: torch.nn modules such as
            ``nn.MultiheadAttention`` are then lowered to their operations,
            which passes can quantize one by one, instead of staying one
            opaque module).
        dynamic_axes: Axes besides the batch whose size varies between calls
            (1 for a sequence length): axis numbers for every tensor input
            that has them, or ``{"ids": [1]}`` for inputs named as
            ``forward``'s parameters (:mod:`qcompile.frontend.dynamic_axes`).
            torch.export keeps them symbolic; an ONNX export declares them
            dynamic (and checks that the model runs at another size).
            ``graph.attrs['dynamic_axes']`` records them per input name.

    Raises:
        LoweringError: if neither fx nor torch.export can lower the model.
    """
    axes = resolve(dynamic_axes, model, example_inputs)
    graph = _lower(model, example_inputs, notes, frontend, axes)
    if any(axes):
        graph.attrs["dynamic_axes"] = recorded(axes, input_names(model, len(example_inputs)),
                                               [node.name for node in graph.input_nodes])
    return graph


def _lower(model: nn.Module, example_inputs: Sequence[Any], notes: list[str] | None, frontend: str,
           axes: PerInput) -> Graph:
    if isinstance(model, fx.GraphModule):
        # exported programs refuse .eval(); they are already inference graphs
        return _lower_graph_module(model, example_inputs, _model_name(model))
    name = _model_name(model)
    if frontend not in FRONTENDS:
        raise QCompileError(f"unknown frontend {frontend!r}", hint="fx or export")
    if frontend == "export":
        return _lower_graph_module(export_for_lowering(model, example_inputs, axes=axes), example_inputs, name)
    fx_error: LoweringError | None = None
    try:
        gm = trace(model.eval())
    except LoweringError as exc:
        fx_error = exc
    if fx_error is None:
        types = _record_types(gm, example_inputs, name)  # wrong inputs: the user's error, no fallback
        try:
            return _finish(gm, types, name)
        except LoweringError as exc:  # a leaf module that cannot be represented
            fx_error = exc
    graph = _lower_graph_module(export_for_lowering(model, example_inputs, fx_error, axes), example_inputs, name)
    reason = _first_line(fx_error)
    if notes is not None:
        batch = graph.attrs.get("fixed_batch")
        fixed = f"; its batch is fixed at {batch}" if batch is not None else ""
        notes.append(f"torch.fx could not lower {name} ({reason}); lowered through torch.export instead{fixed}")
    return graph


def export_for_lowering(model: nn.Module, example_inputs: Sequence[Any],
                        fx_error: LoweringError | None = None, axes: PerInput | None = None) -> fx.GraphModule:
    """``torch.export`` ``model``, batch dimension dynamic if the model allows it, and ``axes`` dynamic.

    ``axes`` holds each example input's dynamic axes besides the batch
    (:func:`qcompile.frontend.dynamic_axes.resolve`). torch.export
    specializes a dimension whose example size is 1, so the example batch
    (and a dynamic axis of size 1) is widened to 2 for the dynamic attempt.
    A model whose code fixes the batch is exported again with the example
    batch as given; its graph then records that batch in
    ``graph.attrs['fixed_batch']``. The ``axes`` stay dynamic in both
    attempts: a model that fixes one of them is an error.

    Raises:
        LoweringError: why torch.export failed (after ``fx_error``, if given).
    """
    tensors = [x for x in example_inputs if isinstance(x, torch.Tensor)]
    axes = axes if axes is not None else tuple(() for _ in example_inputs)
    attempts = []
    if tensors and all(x.dim() > 0 for x in tensors):
        inputs = tuple(_widen(x, (0, *a)) for x, a in zip(example_inputs, axes, strict=True))
        attempts.append((inputs, export_shapes(axes, inputs, torch.export.Dim("batch"))))
    inputs = tuple(_widen(x, a) for x, a in zip(example_inputs, axes, strict=True))
    attempts.append((inputs, export_shapes(axes, inputs, None) if any(axes) else None))
    last: Exception | None = None
    for inputs, dynamic_shapes in attempts:
        # torch logs a failed export's whole graph to stderr (185 kB for a detector): kept back, and passed
        # on only if the export succeeds
        log = io.StringIO()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stderr(log):
                # nn.LSTM / nn.GRU's own attributes: nothing the user can change
                warnings.filterwarnings("ignore", message=r".*_flat_weights.*assigned during export")
                exported = torch.export.export(model.eval(), inputs, dynamic_shapes=dynamic_shapes)
                module = functional(exported).module()
        except Exception as exc:  # noqa: BLE001 - any failure means: try the next form
            last = exc
            continue
        sys.stderr.write(log.getvalue())
        return module
    failure = f"{type(last).__name__}: {_shortened(_first_line(last))}{_caused_by(last)}"
    hint = ("make the model exportable with torch.export.export(model, example_inputs): qcompile lowers whatever "
            "it exports (a branch on tensor values needs torch.cond)")
    clashes = _graph_module_clashes(model)
    if "data-dependent" in str(last):
        hint = ("a branch on tensor values needs torch.cond; a size that depends on them (a detector's box "
                "selection: NMS, scores over a threshold) cannot be lowered: compile the part before it, with a "
                "factory that returns it (for torchvision's detectors, model.backbone), and keep the rest in float")
    if clashes:
        failure = (f"{type(model).__name__}'s {', '.join(clashes)} has a name torch.fx's GraphModule keeps for "
                   f"itself, and torch.export cannot lower that ({failure})")
        hint = (f"rename {clashes[0]} in the model (its weights' names change with it), or lower it with the fx "
                "frontend (the default), which renames it")
    elif any(axes):
        described = describe(dict(zip(input_names(model, len(axes)), axes, strict=True)))
        raise LoweringError(f"torch.export cannot keep {described} dynamic ({type(model).__name__}): "
                            f"{failure}", hint="the model fixes that size (a positional table, a reshape to a "
                            "constant): leave the dynamic axes out, or make the model take any size") from last
    raise LoweringError(
        f"{fx_error.message}\n  torch.export failed as well: {failure}" if fx_error is not None
        else f"torch.export cannot export {type(model).__name__}: {failure}", hint=hint) from last


def _graph_module_clashes(model: nn.Module) -> list[str]:
    """The model's own attributes named as GraphModule's (``self.meta = nn.Linear(...)``)."""
    own = [*model.named_children(), *model.named_parameters(recurse=False), *model.named_buffers(recurse=False)]
    return sorted(f"self.{name}" for name, _ in own if name in graph_module_names())


def _widen(x: Any, axes: Sequence[int]) -> Any:
    """``x`` with each of ``axes`` of size 1 repeated to 2 (torch.export specializes sizes 0 and 1)."""
    if not isinstance(x, torch.Tensor):
        return x
    for axis in axes:
        if axis < x.dim() and x.shape[axis] == 1:
            x = torch.cat([x, x], dim=axis)
    return x


def _shortened(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters: torch's symbolic sizes run to thousands."""
    return text if len(text) <= limit else text[:limit] + f" ... ({len(text) - limit} more characters)"


def _caused_by(exc: BaseException | None) -> str:
    """Where in the model's code torch.export's error arose, as torch names it (``file.py:103 in fn``)."""
    found = re.search(r"Caused by: \(([^)\n]+)\)", str(exc))
    return f" (raised at {found.group(1)})" if found else ""


def _first_line(exc: BaseException | None) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _describe(node: fx.Node) -> str:
    """``conv_layers.5`` (a module), or ``x.size (getattr)`` for a call made in a module."""
    where = node.meta.get("module_path") or node.name
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return where if target == where else f"{where} ({target})"


def _record_types(gm: fx.GraphModule, example_inputs: Sequence[Any], name: str) -> dict[fx.Node, ValueType]:
    recorder = _TypeRecorder(gm)
    try:
        with torch.no_grad():
            recorder.run(*example_inputs)
    except Exception as exc:
        shapes = ", ".join(str(type_of(x)) for x in example_inputs)
        node = recorder.current
        where = "" if node is None else f" at {_describe(node)}"
        raise LoweringError(  # torch's first line; fx appends its own traceback to the rest
            f"running {name} on example inputs {shapes} failed{where}: {type(exc).__name__}: {_first_line(exc)}",
            hint="pass an input shape the model accepts (--input-shape; token ids: --input-shape 1,128:int64)",
        ) from exc
    return recorder.types


def _lower_graph_module(gm: fx.GraphModule, example_inputs: Sequence[Any], name: str) -> Graph:
    graph = _finish(gm, _record_types(gm, example_inputs, name), name)
    batch = _exported_batch(gm)
    if batch is not None:
        graph.attrs["fixed_batch"] = batch
    return graph


def _finish(gm: fx.GraphModule, types: dict[fx.Node, ValueType], name: str) -> Graph:
    graph = Graph(name)
    fold_shape_checks(gm, types)  # timm's _assert(x.ndim == 4): decided now that the ranks are known
    _Converter(gm, graph, types).convert()
    raise_aten(graph)  # ATen calls (torch.export), and F.conv2d / F.linear over the model's weights (fx)
    graph.facts.add("lowered")
    verify(graph)
    return graph


def _exported_batch(gm: fx.GraphModule) -> int | None:
    """The static batch size of an exported module's tensor inputs, if torch.export fixed it."""
    sizes = set()
    for node in gm.graph.find_nodes(op="placeholder"):
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            continue
        first = value.shape[0]
        if not isinstance(first, int):
            return None  # a symbolic (dynamic) batch
        sizes.add(first)
    return sizes.pop() if len(sizes) == 1 else None


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
