"""The integer backends a quantized graph is lowered to, and what each computes exactly."""

from qcompile.backends.grids import (
    BACKEND_GRIDS,
    ExactGrids,
    activation_grid_for,
    backend_of,
    full_activation_grid,
)

__all__ = ["BACKEND_GRIDS", "ExactGrids", "activation_grid_for", "backend_of", "full_activation_grid"]
