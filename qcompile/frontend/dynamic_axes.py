"""Input axes that vary between calls besides the batch (``--dynamic-axes``, ``lower(dynamic_axes=...)``).

Two forms say which:

* axis numbers for every input that has them: ``--dynamic-axes 1`` or
  ``dynamic_axes=(1,)``, a sequence length shared by token ids and their
  attention mask;
* axes per input, named as ``forward``'s parameters: ``--dynamic-axes
  ids:1,mask:1`` or ``dynamic_axes={"ids": [1], "mask": [1]}``. Inputs left
  out keep every size of the example (a feature vector beside the tokens).

torch.export gets one symbol per axis number for the inputs whose example
sizes on that axis agree (they are taken to be the same length) and one
symbol per input where they differ. The ONNX export declares each input's
axes as its own (``<input>_axis<k>``); :mod:`qcompile.onnx.inputs` reads
what lowering recorded in ``graph.attrs['dynamic_axes']``: input name ->
axes.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from qcompile.errors import QCompileError

AxesSpec = Sequence[int] | Mapping[str, Sequence[int]]
PerInput = tuple[tuple[int, ...], ...]  # the dynamic axes of each example input, by position


def parse_dynamic_axes(text: str) -> tuple[int, ...] | dict[str, tuple[int, ...]]:
    """``1,2`` -> ``(1, 2)``; ``ids:1,mask:1`` -> ``{"ids": (1,), "mask": (1,)}`` (argparse type)."""
    items = [item.strip() for item in text.split(",")]
    named = [":" in item for item in items]
    if any(named) and not all(named):
        raise argparse.ArgumentTypeError(
            f"{text!r} mixes axes for every input with axes for named inputs: give either 1,2 or ids:1,mask:1")
    try:
        if not any(named):
            return tuple(int(item) for item in items)
        per_input: dict[str, tuple[int, ...]] = {}
        for item in items:
            name, axis = item.split(":")
            per_input[name.strip()] = (*per_input.get(name.strip(), ()), int(axis))
        return per_input
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of axes: give 1 or 1,2 (every input that has them), or ids:1,mask:1 "
            "(named inputs)") from None


def input_names(model: nn.Module, count: int) -> list[str]:
    """The names of ``model.forward``'s first ``count`` parameters (``input0``... where it has none)."""
    try:
        parameters = [p for p in inspect.signature(model.forward).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        parameters = []
    names = [p.name for p in parameters[:count]]
    return names + [f"input{i}" for i in range(len(names), count)]


def resolve(spec: AxesSpec, model: nn.Module, example_inputs: Sequence[Any]) -> PerInput:
    """Each example input's dynamic axes, checked against the inputs' names and ranks."""
    ranks = [x.dim() if isinstance(x, torch.Tensor) else 0 for x in example_inputs]
    if isinstance(spec, Mapping):
        names = input_names(model, len(example_inputs))
        unknown = sorted(set(spec) - set(names))
        if unknown:
            raise QCompileError(f"dynamic axes for {', '.join(map(repr, unknown))}: the model's inputs are "
                                f"{', '.join(names) or 'none'}",
                                hint="name inputs as the parameters of the model's forward()")
        per_input = tuple(_checked(spec.get(name, ()), [rank], name) for name, rank in zip(names, ranks, strict=True))
    else:
        axes = _checked(spec, ranks, None)
        per_input = tuple(tuple(a for a in axes if a < rank) for rank in ranks)
    return per_input


def _checked(axes: Sequence[int], ranks: list[int], name: str | None) -> tuple[int, ...]:
    axes = tuple(sorted(set(axes)))
    which = f"input {name!r} does not have" if name else "no model input has"
    for axis in axes:
        if not isinstance(axis, int) or axis < 1:
            raise QCompileError(f"dynamic axis {axis!r}: give axes after the batch (1, 2, ...)",
                                hint="the batch (axis 0) is always dynamic; 1 is a sequence model's length")
        if not any(rank > axis for rank in ranks):
            raise QCompileError(f"dynamic axis {axis}: {which} that axis (input ranks: {ranks})",
                                hint="count axes from 0, the batch: [batch, sequence, features] has the sequence at 1")
    return axes


def export_shapes(per_input: PerInput, example_inputs: Sequence[Any], batch: Any | None) -> tuple:
    """torch.export's ``dynamic_shapes``: ``batch`` (a Dim, or None to keep it) on axis 0 and a Dim on
    each dynamic axis, one per axis number among inputs of equal example size on it."""
    symbols: dict[tuple[int, int], torch.export.Dim] = {}
    shapes = []
    for i, (x, axes) in enumerate(zip(example_inputs, per_input, strict=True)):
        if not isinstance(x, torch.Tensor):
            shapes.append(None)
            continue
        dims = {0: batch} if batch is not None else {}
        for axis in axes:
            key = (axis, x.shape[axis])
            if key not in symbols:  # another size on this axis already has the plain name
                symbols[key] = torch.export.Dim(f"axis{axis}" + (f"_{i}" if _shared_size(key, symbols) else ""))
            dims[axis] = symbols[key]
        shapes.append(dims)
    return tuple(shapes)


def _shared_size(key: tuple[int, int], symbols: dict) -> bool:
    """Whether another size already has a symbol on the same axis (so this one needs its own name)."""
    return any(axis == key[0] and size != key[1] for axis, size in symbols)


def recorded(per_input: PerInput, names: Sequence[str], graph_inputs: Sequence[str]) -> dict[str, list[int]]:
    """What ``graph.attrs['dynamic_axes']`` keeps: graph input name -> its dynamic axes.

    ``names`` are the example inputs' (``forward``'s parameters); the graph's
    inputs carry the same names where lowering kept them, and otherwise (an
    exported module's own placeholder names) follow in the same order.
    """
    if set(graph_inputs) <= set(names):
        return {name: list(axes) for name, axes in zip(names, per_input, strict=True) if axes and name in graph_inputs}
    return {name: list(axes) for name, axes in zip(graph_inputs, per_input, strict=False) if axes}


def describe(axes: Mapping[str, Sequence[int]]) -> str:
    """``axes [1] of ids, mask`` (inputs grouped by their axes; inputs without any left out)."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for name, of_input in axes.items():
        if of_input:
            groups.setdefault(tuple(of_input), []).append(name)
    return "; ".join(f"axes {list(a)} of {', '.join(names)}" for a, names in groups.items())
