"""Raising an ATen-level graph (torch.export, TorchScript) to module-level ops.

An exported program spells a convolution as
``aten.conv2d.default(x, weight, bias, stride, padding, dilation, groups)``
with the weights read through ``get_attr``. The passes work on module-level
ops (a ``conv2d`` MODULE node owning its weights), so this step rewrites the
ATen calls it recognises into exactly the nodes ``fx`` lowering produces, and
makes in-place ATen ops (``relu_``, ``add_``) functional. Whatever it does not
recognise stays a FUNCTION node and still executes.

torch.fx leaves ``F.conv2d(x, self.weight, self.bias, ...)`` and
``F.linear(x, self.weight)`` as function calls over parameters; they take
the ATen ops' arguments, so they are raised the same way (the node keeps
its name), and quantize like ``nn.Conv2d`` / ``nn.Linear``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind, Ref
from qcompile.ir.targets import op_name_for_function, op_name_for_module, resolve_target
from qcompile.ir.types import TupleType


def _bind(node: Node, inputs: list[Node]) -> dict[str, Any]:
    """Schema argument name -> value (a Node for inputs), defaults filled in."""
    schema = resolve_target(node.target)._schema
    bound: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            value = node.args[i]
        elif arg.name in node.kwargs:
            value = node.kwargs[arg.name]
        else:
            value = arg.default_value
        bound[arg.name] = _resolved(value, inputs)
    return bound


def _resolved(value: Any, inputs: list[Node]) -> Any:
    """``value`` with ``Ref``s (also inside lists, such as an RNN's weights) replaced by their nodes."""
    if isinstance(value, Ref):
        return inputs[value.index]
    if isinstance(value, (list, tuple)):
        return type(value)(_resolved(v, inputs) for v in value)
    return value


def _param_name(value: Any) -> str | None:
    """The graph parameter behind ``value`` if it is a PARAM node, else None."""
    if isinstance(value, Node) and value.kind == NodeKind.PARAM:
        return value.target
    return None


def _params(b: dict, *keys: str) -> dict[str, str] | None:
    """The graph parameter behind each of ``keys`` given a value (a weight, a bias), or None if one of
    them is computed in forward instead."""
    names = {key: _param_name(b[key]) for key in keys if b[key] is not None}
    return None if None in names.values() else names


def _shared(graph: Graph, node: Node, name: str) -> bool:
    """Whether parameter ``name`` is read anywhere but by ``node`` (tied weights: an embedding table that
    is also the output layer). Such a layer stays a call: quantizing the weight would change the other reader."""
    readers = [user for p in graph.find(kind=NodeKind.PARAM) if p.target == name for user in graph.users(p)]
    owners = [m for m in graph.find(kind=NodeKind.MODULE) if name in m.params.values()]
    return any(r is not node for r in readers) or bool(owners)


def _to_module(graph: Graph, node: Node, x: Node, cls: type, attrs: dict, params: dict, rename: bool = True) -> None:
    """``node`` as a ``cls`` module reading ``x``; named after its module (``rename``; not for a functional call,
    whose module is the one calling it)."""
    node.kind = NodeKind.MODULE
    node.op = op_name_for_module(cls)
    node.target = f"torch.nn.{cls.__name__}"
    node.attrs = attrs
    node.params = params
    graph.set_inputs(node, [x], args=(Ref(0),), kwargs={})
    path = node.source.module_path
    if not path and params:
        # TorchScript keeps no module stack, but the weights' names tell it
        path = next(iter(params.values())).rpartition(".")[0]
        node.source = replace(node.source, module_path=path)
    if path and rename:
        graph.rename(node, path)


def _raise_conv(graph: Graph, node: Node, b: dict, rename: bool = True) -> bool:
    params = _params(b, "weight", "bias")
    if params is None or "weight" not in params or _shared(graph, node, params["weight"]):
        return False
    w = graph.params[params["weight"]]
    dims = w.dim() - 2
    cls = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}.get(dims)
    if cls is None:
        return False
    padding = b["padding"] if isinstance(b["padding"], str) else tuple(b["padding"])
    attrs = dict(
        in_channels=w.shape[1] * b["groups"], out_channels=w.shape[0],
        kernel_size=tuple(w.shape[2:]), stride=tuple(b["stride"]), padding=padding,
        dilation=tuple(b["dilation"]), groups=b["groups"], bias="bias" in params,
        padding_mode="zeros",
    )
    _to_module(graph, node, b["input"], cls, attrs, params, rename)
    return True


def _raise_conv_transpose(graph: Graph, node: Node, b: dict) -> bool:
    """``aten.conv_transpose*d`` over the module's weight ``[in, out / groups, ...]``: ``nn.ConvTranspose*d``."""
    params = _params(b, "weight", "bias")
    if params is None or "weight" not in params or _shared(graph, node, params["weight"]):
        return False
    w = graph.params[params["weight"]]
    cls = {1: torch.nn.ConvTranspose1d, 2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d}.get(w.dim() - 2)
    if cls is None:
        return False
    attrs = dict(
        in_channels=w.shape[0], out_channels=w.shape[1] * b["groups"], kernel_size=tuple(w.shape[2:]),
        stride=tuple(b["stride"]), padding=tuple(b["padding"]), output_padding=tuple(b["output_padding"]),
        groups=b["groups"], bias="bias" in params, dilation=tuple(b["dilation"]), padding_mode="zeros",
    )
    _to_module(graph, node, b["input"], cls, attrs, params)
    return True


def _raise_linear(graph: Graph, node: Node, b: dict, rename: bool = True) -> bool:
    params = _params(b, "weight", "bias")
    if params is None or "weight" not in params or _shared(graph, node, params["weight"]):
        return False
    w = graph.params[params["weight"]]
    attrs = dict(in_features=w.shape[1], out_features=w.shape[0], bias="bias" in params)
    _to_module(graph, node, b["input"], torch.nn.Linear, attrs, params, rename)
    return True


def _raise_batch_norm(graph: Graph, node: Node, b: dict) -> bool:
    names = {k: _param_name(b[k]) for k in ("weight", "bias", "running_mean", "running_var")}
    if b["training"] or names["running_mean"] is None or names["running_var"] is None:
        return False
    affine = names["weight"] is not None and names["bias"] is not None
    rank = len(getattr(node.type, "shape", ()))
    cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
           5: torch.nn.BatchNorm3d}.get(rank)
    if cls is None:
        return False
    mean = names["running_mean"]
    counter = mean.rpartition(".")[0] + ".num_batches_tracked" if "." in mean else mean + "_count"
    if counter not in graph.params:
        # nn.BatchNorm's state dict has this counter; eval-mode BN never reads it
        counter = graph.add_param(counter, torch.tensor(0))
    params = {k: v for k, v in names.items() if v is not None and (affine or k.startswith("running"))}
    params["num_batches_tracked"] = counter
    attrs = dict(num_features=graph.params[mean].shape[0], eps=b["eps"], momentum=b["momentum"],
                 affine=affine, track_running_stats=True)
    _to_module(graph, node, b["input"], cls, attrs, params)
    return True


def _raise_activation(graph: Graph, node: Node, b: dict, cls: type) -> bool:
    _to_module(graph, node, b["self"], cls, {"inplace": False}, {})
    return True


def _raise_hardtanh(graph: Graph, node: Node, b: dict) -> bool:
    if (b["min_val"], b["max_val"]) != (0.0, 6.0):
        return False
    return _raise_activation(graph, node, b, torch.nn.ReLU6)


def _raise_group_norm(graph: Graph, node: Node, b: dict) -> bool:
    params = _params(b, "weight", "bias")
    if params is None or ("bias" in params and "weight" not in params):
        return False
    attrs = dict(num_groups=b["num_groups"], num_channels=node.type.shape[1], eps=b["eps"],
                 affine="weight" in params, bias="bias" in params)
    _to_module(graph, node, b["input"], torch.nn.GroupNorm, attrs, params)
    return True


def _raise_instance_norm(graph: Graph, node: Node, b: dict) -> bool:
    """``aten.instance_norm`` from the input's own statistics (the default ``track_running_stats=False``)."""
    params = _params(b, "weight", "bias")
    cls = {3: torch.nn.InstanceNorm1d, 4: torch.nn.InstanceNorm2d, 5: torch.nn.InstanceNorm3d}.get(
        len(node.type.shape))
    if not b["use_input_stats"] or b["running_mean"] is not None or cls is None or params is None or len(params) == 1:
        return False
    attrs = dict(num_features=node.type.shape[1], eps=b["eps"], momentum=b["momentum"], affine=bool(params),
                 track_running_stats=False)
    _to_module(graph, node, b["input"], cls, attrs, params)
    return True


def _raise_upsample(graph: Graph, node: Node, b: dict, mode: str) -> bool:
    """``aten.upsample_*.vec`` (``F.interpolate``, ``nn.Upsample`` under torch.export) as ``nn.Upsample``."""
    size, scales = b["output_size"], b["scale_factors"]
    if size is not None and any(isinstance(v, Node) for v in size):
        return False  # a size computed in forward
    attrs = dict(size=tuple(size) if size is not None else None,
                 scale_factor=tuple(scales) if scales is not None else None, mode=mode,
                 align_corners=b.get("align_corners"), recompute_scale_factor=None)
    _to_module(graph, node, b["input"], torch.nn.Upsample, attrs, {})
    return True


def _only_first_output_read(graph: Graph, node: Node) -> bool:
    """``node`` returns a tuple of which only element 0 is read (through ``getitem``)."""
    return isinstance(node.type, TupleType) and all(
        r.op == "getitem" and isinstance(r.args[1], int) and (r.args[1] == 0 or not graph.users(r))
        for r in graph.users(node))


def _keep_first_output(graph: Graph, node: Node, readers: list[Node]) -> None:
    """After raising ``node`` to a module returning element 0 of its old tuple: its ``getitem``s go."""
    for reader in readers:
        if reader.args[1] == 0:
            graph.replace_all_uses(reader, node)
        graph.erase(reader)


def _raise_adaptive_max_pool(graph: Graph, node: Node, b: dict) -> bool:
    """``aten.adaptive_max_pool*d``, which always returns ``(values, indices)``, as the
    ``nn.AdaptiveMaxPool*d`` module returning the values, where nothing reads the indices."""
    if not _only_first_output_read(graph, node):
        return False
    readers = graph.users(node)
    cls = getattr(torch.nn, f"AdaptiveMaxPool{node.op[-2]}d")
    node.type = node.type.elements[0]
    _to_module(graph, node, b["self"], cls, {"output_size": tuple(b["output_size"]), "return_indices": False}, {},
               rename=False)
    _keep_first_output(graph, node, readers)
    return True


def _raise_native_batch_norm(graph: Graph, node: Node, b: dict) -> bool:
    """``aten._native_batch_norm_legit_no_training`` (a functionalized program's eval-mode batch norm, which
    returns ``(out, mean, invstd)``) as the ``nn.BatchNorm*d`` that ``aten.batch_norm`` becomes."""
    if not _only_first_output_read(graph, node):
        return False
    readers, whole = graph.users(node), node.type
    node.type = whole.elements[0]
    if not _raise_batch_norm(graph, node, b | {"training": False}):
        node.type = whole
        return False
    _keep_first_output(graph, node, readers)
    return True


def _own_zeros(graph: Graph, value: Any, node: Node) -> bool:
    """``value`` is an ``aten.zeros`` node only ``node`` reads (an RNN's initial state when forward passes none)."""
    return (isinstance(value, Node) and value.target == "torch.ops.aten.zeros.default"
            and all(user is node for user in graph.users(value)))


def _raise_rnn(graph: Graph, node: Node, b: dict, cls: type) -> bool:
    """``aten.lstm`` / ``aten.gru`` over a module's weights, from zero states: that ``nn.LSTM`` / ``nn.GRU``.

    torch.export decomposes ``self.lstm(x)`` into zero initial states and
    ``aten.lstm(x, [h0, c0], params, ...)``, which returns ``(out, h, c)``
    where the module returns ``(out, (h, c))``: readers of ``h`` and ``c``
    are moved onto a ``getitem`` of the pair. Given states, projections or
    training mode, the call stays as it is.
    """
    states = list(b["hx"]) if isinstance(b["hx"], (list, tuple)) else [b["hx"]]
    names = [_param_name(p) for p in b["params"]]
    if b["train"] or not all(_own_zeros(graph, s, node) for s in states) or None in names or not names:
        return False
    attrs = dict(input_size=graph.params[names[0]].shape[1], hidden_size=graph.params[names[1]].shape[1],
                 num_layers=b["num_layers"], bias=b["has_biases"], batch_first=b["batch_first"],
                 dropout=b["dropout"], bidirectional=b["bidirectional"], proj_size=0)
    # its weights' names and shapes, nothing allocated (only nn.LSTM takes proj_size; fx lowering records it anyway)
    reference = cls(**{k: v for k, v in attrs.items() if k != "proj_size" or cls is torch.nn.LSTM}, device="meta")
    expected = reference._flat_weights_names
    if len(expected) != len(names) or any(graph.params[n].shape != getattr(reference, e).shape
                                          for n, e in zip(names, expected, strict=True)):
        return False
    readers = graph.users(node)
    _to_module(graph, node, b["input"], cls, attrs, dict(zip(expected, names, strict=True)))
    for state in states:
        size = graph.inputs(state)
        graph.erase(state)
        for producer in size:  # the batch read off the input for the zeros' shape
            if producer.kind != NodeKind.INPUT and not graph.users(producer):
                graph.erase(producer)
    if cls is torch.nn.LSTM:
        out, h, c = node.type.elements
        node.type = TupleType((out, TupleType((h, c))))
        pair = graph.add_node("getitem", NodeKind.FUNCTION, [node], name=f"{node.name}_state",
                              target="operator.getitem", args=(Ref(0), 1), type=node.type.elements[1],
                              source=node.source, after=node)
        for reader in readers:
            if reader.op == "getitem" and reader.args[1] in (1, 2):
                graph.set_inputs(reader, [pair], args=(Ref(0), reader.args[1] - 1), kwargs={})
    return True


_RAISERS = {
    "conv1d": _raise_conv,
    "conv2d": _raise_conv,
    "conv3d": _raise_conv,
    "linear": _raise_linear,
    "conv_transpose1d": _raise_conv_transpose,
    "conv_transpose2d": _raise_conv_transpose,
    "conv_transpose3d": _raise_conv_transpose,
    "batch_norm": _raise_batch_norm,
    "_native_batch_norm_legit_no_training": _raise_native_batch_norm,
    "relu": lambda g, n, b: _raise_activation(g, n, b, torch.nn.ReLU),
    "hardtanh": _raise_hardtanh,
    "group_norm": _raise_group_norm,
    "instance_norm": _raise_instance_norm,
    "upsample_nearest2d": lambda g, n, b: _raise_upsample(g, n, b, "nearest"),
    "upsample_bilinear2d": lambda g, n, b: _raise_upsample(g, n, b, "bilinear"),
    "adaptive_max_pool1d": _raise_adaptive_max_pool,
    "adaptive_max_pool2d": _raise_adaptive_max_pool,
    "adaptive_max_pool3d": _raise_adaptive_max_pool,
    "lstm": lambda g, n, b: _raise_rnn(g, n, b, torch.nn.LSTM),
    "gru": lambda g, n, b: _raise_rnn(g, n, b, torch.nn.GRU),
}


def _functional(node: Node) -> None:
    """``aten.relu_.default`` -> ``aten.relu.default``: the graph has no mutation."""
    op = resolve_target(node.target)
    name = op._opname
    if not name.endswith("_") or name.startswith("_"):
        return
    packet = getattr(torch.ops.aten, name[:-1], None)
    overload = getattr(packet, op._overloadname, None) if packet is not None else None
    if overload is not None:
        node.target = f"torch.ops.aten.{name[:-1]}.{op._overloadname}"
        node.op = op_name_for_function(overload)


# torch's functional convolutions and linear (``F.conv2d(x, self.w, ...)``), which take the ATen ops' arguments
# (and batch norm over its running statistics: timm's BatchNormAct2d calls F.batch_norm in its forward)
_FUNCTIONAL = {f"torch.conv{n}d": "conv" for n in (1, 2, 3)} | {
    "torch.nn.functional.linear": "linear", "torch._C._nn.linear": "linear",
    "torch.nn.functional.batch_norm": "batch_norm"}
_FUNCTIONAL_ARGS = {"conv": (("input", None), ("weight", None), ("bias", None), ("stride", 1), ("padding", 0),
                             ("dilation", 1), ("groups", 1)),
                    "linear": (("input", None), ("weight", None), ("bias", None)),
                    "batch_norm": (("input", None), ("running_mean", None), ("running_var", None),
                                   ("weight", None), ("bias", None), ("training", False), ("momentum", 0.1),
                                   ("eps", 1e-5))}
_FUNCTIONAL_RAISERS = {"conv": lambda g, n, b: _raise_conv(g, n, b, rename=False),
                       "linear": lambda g, n, b: _raise_linear(g, n, b, rename=False),
                       "batch_norm": _raise_batch_norm}  # named after the module whose statistics it reads


def _bind_functional(graph: Graph, node: Node, kind: str) -> dict[str, Any] | None:
    """A functional call's arguments by name, as :func:`_bind` gives an ATen op's; None if its weight is
    not one of the model's parameters (a weight computed in forward stays a function call)."""
    b = {name: node.args[i] if i < len(node.args) else node.kwargs.get(name, default)
         for i, (name, default) in enumerate(_FUNCTIONAL_ARGS[kind])}
    b = {k: _resolved(v, graph.inputs(node)) for k, v in b.items()}
    if _param_name(b["running_mean" if kind == "batch_norm" else "weight"]) is None:
        return None
    if kind == "conv":
        dims = graph.params[b["weight"].target].dim() - 2
        for key in ("stride", "padding", "dilation"):
            if isinstance(b[key], int):
                b[key] = (b[key],) * dims
    return b


def raise_aten(graph: Graph) -> dict[str, int]:
    """Rewrite recognised ATen calls (and torch's functional convolutions and linear over the model's own
    weights) into module-level nodes; return counts by op."""
    counts: dict[str, int] = {}
    for node in graph.nodes():
        if node.kind == NodeKind.FUNCTION and node.target in _FUNCTIONAL:
            kind = _FUNCTIONAL[node.target]
            b = _bind_functional(graph, node, kind)
            if b is not None and _FUNCTIONAL_RAISERS[kind](graph, node, b):
                counts[node.op] = counts.get(node.op, 0) + 1
            continue
        if node.kind != NodeKind.FUNCTION or not node.target.startswith("torch.ops.aten."):
            continue
        _functional(node)
        raiser = _RAISERS.get(node.op)
        if raiser is not None and raiser(graph, node, _bind(node, graph.inputs(node))):
            counts[node.op] = counts.get(node.op, 0) + 1
    for node in graph.find(kind=NodeKind.PARAM):
        if not graph.users(node):
            graph.erase(node)
    graph.remove_unused_params()
    graph.renumber()
    return counts
