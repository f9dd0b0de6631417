"""Refusing to write a model that computes garbage.

After a compile, the emitted module runs on real inputs (the first batch of
the calibration data, at most :data:`CHECK_SAMPLES` samples; seeded normal
inputs of the example shape only when there is no data) and is held to the
graph it came from and to the float model:

* a value that is NaN or infinite where the float model's is finite fails;
* an output that is one constant where the float model's varies fails (a
  grid of zero bits, a clip at zero);
* a difference from the graph's interpreter beyond :func:`tolerance` fails
  (codegen and the interpreter disagree).

The deploy artefacts (TorchScript, ``torch.export``) are held to the emitted
module the same way. A failure is an :class:`OutputCheckFailed` (exit 2):
the caller writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from qcompile.backends.torch_ao.tensors import dequantized
from qcompile.errors import QCompileError

CHECK_SAMPLES = 8


class OutputCheckFailed(QCompileError):
    """The emitted model (or a deploy artefact) computes something unusable; nothing was written."""


@dataclass(frozen=True)
class CheckInputs:
    """Inputs the checks run on, and where they came from (for messages)."""

    tensors: tuple
    source: str


def check_inputs(first_batch: tuple | None, examples: tuple) -> CheckInputs:
    """The first calibration batch (at most :data:`CHECK_SAMPLES`), else the examples made non-degenerate."""
    if first_batch is not None:
        batch = tuple(t[:CHECK_SAMPLES] if isinstance(t, torch.Tensor) else t for t in first_batch)
        return CheckInputs(batch, f"{len(batch[0])} calibration samples")
    generator = torch.Generator().manual_seed(0)
    tensors = tuple(
        torch.randn(t.shape, generator=generator, dtype=t.dtype)
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not t.any() else t
        for t in examples)
    return CheckInputs(tensors, "random normal inputs of the example shape (no data given)")


def flatten(outputs: Any) -> list[torch.Tensor]:
    """The tensors of a model's outputs (nested tuples, lists and dicts), dequantized, as float."""
    if isinstance(outputs, torch.Tensor):
        return [dequantized(outputs).detach().float()]
    if isinstance(outputs, Mapping):
        return [t for key in outputs for t in flatten(outputs[key])]
    if isinstance(outputs, (tuple, list)):
        return [t for item in outputs for t in flatten(item)]
    return []


def tolerance(expected: torch.Tensor) -> float:
    """How far two computations of the same integer or float model may differ: float rounding, not a step."""
    finite = expected[torch.isfinite(expected)]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    return 1e-4 * max(1.0, scale)


def _constant(t: torch.Tensor) -> bool:
    return t.numel() > 1 and bool((t == t.reshape(-1)[0]).all())


def verify_outputs(actual: Any, expected: Any, *, what: str, against: str, source: str,
                   float_reference: Any = None) -> float:
    """Hold ``actual`` to ``expected`` (and to the float model's outputs); return the max abs difference.

    Raises:
        OutputCheckFailed: non-finite or constant outputs where the float model has neither, or a
            difference beyond :func:`tolerance`.
    """
    got, want = flatten(actual), flatten(expected)
    floats = flatten(float_reference) if float_reference is not None else want
    if len(got) != len(want):
        raise OutputCheckFailed(f"{what} returns {len(got)} tensors where {against} returns {len(want)}",
                                hint="this is a bug in qcompile; please report it with the command line")
    worst = 0.0
    for index, (a, b) in enumerate(zip(got, want, strict=True)):
        name = f"output {index}" if len(got) > 1 else "its output"
        reference = floats[index] if index < len(floats) and floats[index].shape == a.shape else b
        bad = ~torch.isfinite(a) & torch.isfinite(reference)
        if bad.any():
            raise OutputCheckFailed(
                f"{what} computes NaN or infinity in {int(bad.sum())} of {a.numel()} values of {name} "
                f"on {source}, where the float model's are finite; nothing was written",
                hint="check the pass options (e.g. aciq{k=...}, bits): a clipping range or grid that is not a "
                "finite positive number breaks the model")
        if _constant(a) and not _constant(reference):
            raise OutputCheckFailed(
                f"{what} gives every value of {name} as {float(a.reshape(-1)[0]):.6g} on {source}, where the "
                "float model's vary; nothing was written",
                hint="the grids leave no information through (e.g. simulate{bits=0} or a clip at zero): use "
                "at least 2 bits, and calibrate on data like the model's inputs")
        if a.shape != b.shape:
            raise OutputCheckFailed(f"{what} gives {name} the shape {tuple(a.shape)} where {against} gives "
                                    f"{tuple(b.shape)}", hint="this is a bug in qcompile; please report it")
        finite = torch.isfinite(a) & torch.isfinite(b)
        diff = float((a[finite] - b[finite]).abs().max()) if finite.any() else 0.0
        if diff > tolerance(b):
            raise OutputCheckFailed(
                f"{what} differs from {against} by up to {diff:.3g} in {name} on {source} (tolerance "
                f"{tolerance(b):.3g}); nothing was written",
                hint="this is a bug in qcompile's code generation or kernels; please report it with the command")
        worst = max(worst, diff)
    return worst
