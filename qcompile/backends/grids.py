"""The integer grids each backend's kernels compute exactly, and the activation grid that follows.

A grid is exact for a backend when its kernels produce, for every input
code, the result of the integer arithmetic the graph describes. That is a
property of how they accumulate:

* ``gemmlowp`` (qcompile's own kernels, :mod:`qcompile.kernels`) sums
  ``(q_a - z_a) * q_w`` in int32, or in float32 chunks small enough to be
  exact: full 8-bit activation grids (codes 0-255) with 8-bit weights are
  exact on every CPU.
* ``native`` (torch's x86 / fbgemm engines) multiplies uint8 by int8 with
  ``vpmaddubsw`` on CPUs without VNNI and adds neighbouring products in
  saturating int16, so PyTorch's presets keep activations on 7-bit grids
  (``reduce_range``); the emitted module has to be exact on whichever x86 CPU
  runs it, so it keeps them.

``observe`` gives each activation the most accurate grid the pipeline's
backend computes exactly (``observe{activation-grid=backend}``, the
default): for ``gemmlowp`` the preset's 7-bit grid becomes the full 8-bit
one. ``activation-grid=preset`` keeps the preset's grid, as PyTorch's quantization would
(for comparing backends on identical grids). Per-layer overrides from a
config file are the user's word and are never changed. Before and after
(``ptq --backend gemmlowp``)::

    %conv1 = conv2d(...)  # mode=static obs=histogram uint8[0,127] affine | weight: ...
    %conv1 = conv2d(...)  # mode=static obs=histogram uint8[0,255] affine | weight: ...
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from qcompile.ir.quant_types import ObserverSpec
from qcompile.pipeline.pass_base import STATICALLY_CONVERTED, first_providing


@dataclass(frozen=True)
class ExactGrids:
    """What a backend's kernels compute exactly.

    Attributes:
        full_activations: uint8 activation codes over the whole container (0-255) times 8-bit weights.
    """

    full_activations: bool


BACKEND_GRIDS: dict[str, ExactGrids] = {
    "gemmlowp": ExactGrids(full_activations=True),
    "reference": ExactGrids(full_activations=True),  # the integer stage's exact arithmetic (integerize)
    "native": ExactGrids(full_activations=False),
}


def backend_of(passes: Iterable) -> str | None:
    """The backend the pipeline's ``convert`` lowers to (None without a convert)."""
    lowering = first_providing(passes, STATICALLY_CONVERTED)
    return lowering.backend if lowering is not None else None


def activation_grid_for(spec: ObserverSpec, backend: str | None) -> ObserverSpec:
    """``spec`` on the most accurate grid ``backend`` computes exactly (unchanged without a backend)."""
    grids = BACKEND_GRIDS.get(backend) if backend is not None else None
    return full_activation_grid(spec) if grids is not None and grids.full_activations else spec


def full_activation_grid(spec: ObserverSpec) -> ObserverSpec:
    """``spec`` over the whole uint8 container (codes 0-255) where it reduces the range."""
    return replace(spec, reduce_range=False) if spec.reduce_range and spec.dtype == "uint8" else spec
