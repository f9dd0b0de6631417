"""Second-order rounding of a layer's weights on its inputs (GPTQ, Frantar et al. 2022; OBQ before it).

A layer's output error from rounding its weight ``W`` (one row per output
channel) to ``Q`` on inputs ``X`` (one row per output position: a linear
layer's input, a convolution's receptive-field patch) is, row by row::

    ||(W - Q) X^T||^2 = (w - q) H (w - q)^T,    H = X^T X / n

Rounding each weight to nearest ignores ``H``'s off-diagonal terms, which
is what costs MobileNetV2's depthwise edge filters most (weights such as
-15 and +10 that cancel on a smooth input, whose rounding errors do not).
Two exact or near-exact minimisers of that quadratic, per output channel:

- **Few weights per channel** (at most :data:`EXHAUSTIVE_UP_TO`, such as a
  3x3 depthwise filter's nine): every choice of floor or ceiling for each
  weight is tried (512 for nine) and the one of least error kept. Exact
  among the two-neighbour roundings.
- **Otherwise**, GPTQ: the weights are rounded one input column at a time,
  in order of decreasing ``H`` diagonal, and each column's rounding error is
  pushed onto the columns not yet rounded through ``H``'s inverse (its
  upper Cholesky factor ``U``, ``H^-1 = U^T U``), in blocks of :data:`BLOCK` columns::

      e = (w_i - q_i) / U_ii,    w_j -= e U_ij   (j > i)

The grid is fixed beforehand (``convert``'s per-channel scale, zero point
and code range, :class:`qcompile.quant.adaround.WeightGrid`); only the codes
are chosen, so the result is exactly what the integer model holds, at any
bit width. ``H`` is damped by ``damp`` times its mean diagonal (the paper's
1%), which also covers inputs that are always zero.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from qcompile.quant.adaround import WeightGrid

EXHAUSTIVE_UP_TO = 10  # weights per channel up to which every floor / ceiling choice is tried (2^10 = 1024)
BLOCK = 128  # columns whose error feedback is applied together


def moments(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``A^T B / n`` per group, as float64: ``a`` and ``b`` are ``(rows, K)`` or ``(rows, groups, K)`` (the same
    rows); ``b`` defaults to ``a`` (the Hessian ``H`` of the module docstring). Summed in float32 products."""
    b = a if b is None else b
    if a.dim() == 2:
        a, b = a[:, None], b[:, None]
    a, b = a.float().permute(1, 2, 0), b.float().permute(1, 0, 2)  # (groups, K, rows), (groups, rows, K)
    return torch.bmm(a, b).double() / max(a.shape[-1], 1)


def hessians(inputs: torch.Tensor) -> torch.Tensor:
    """``X^T X / n`` per group, float64: ``inputs`` is ``(rows, K)`` or ``(rows, groups, K)``; (groups, K, K)."""
    return moments(inputs)


def compensated_weight(weight: torch.Tensor, hessian: torch.Tensor, cross: torch.Tensor,
                       damp: float = 0.01) -> torch.Tensor:
    """The weight ``W'`` that best maps the quantized model's inputs ``X^`` to the float layer's outputs:
    ``argmin ||X^ W'^T - X W^T||^2 = W (X^T X^) (X^^T X^)^-1`` per group, damped towards ``W``. ``hessian`` is
    ``moments(X^)``, ``cross`` is ``moments(X, X^)`` (the float model's inputs ``X`` at the same rows).
    Rounding ``W'`` under ``X^``'s Hessian then minimises the layer's error against the float model, the
    error its input already carries included."""
    groups, k, _ = hessian.shape
    damping = damp * torch.diagonal(hessian, dim1=1, dim2=2).mean(1).clamp(min=1e-12)[:, None, None]
    w = weight.double().reshape(groups, -1, k)
    # damped towards W itself (not towards zero): directions the inputs hardly take keep W's weights
    right = torch.einsum("gok,gkl->glo", w, cross) + damping * w.transpose(1, 2)
    # the damped Hessian is symmetric positive definite: a Cholesky solve (a third of LU's work)
    factor = torch.linalg.cholesky(hessian + damping * torch.eye(k, dtype=hessian.dtype))
    mapped = torch.cholesky_solve(right, factor)  # (groups, K, out)
    return mapped.transpose(1, 2).reshape(weight.shape).to(weight.dtype)


def gptq_codes(weight: torch.Tensor, grid: WeightGrid, hessian: torch.Tensor, *, damp: float = 0.01) -> torch.Tensor:
    """Codes of ``weight`` on ``grid`` that minimise the output error under ``hessian`` (see the module docstring).

    ``weight`` is ``(out_channels, ...)`` with the inputs of a group flattened
    in the order of the rows ``hessian`` was built from; ``hessian`` is
    ``(groups, K, K)``, the output channels split evenly over the groups
    (grouped and depthwise convolutions). Returns the codes in ``weight``'s
    shape, float64, as :meth:`WeightGrid.codes` does.
    """
    out_channels = weight.shape[0]
    groups, k, _ = hessian.shape
    if out_channels % groups or weight[0].numel() != k:
        raise ValueError(f"a weight of shape {tuple(weight.shape)} does not match {groups} groups of {k} inputs")

    def flat(per_channel: torch.Tensor) -> torch.Tensor:  # (out, 1, ...) -> (groups, out / groups, K)
        return per_channel.reshape(out_channels, 1).expand(out_channels, k).reshape(groups, -1, k)

    scaled = (weight.double().reshape(out_channels, -1) / grid.scale.reshape(-1, 1)).reshape(groups, -1, k)
    zero, qmin, qmax = flat(grid.zero_point), flat(grid.qmin), flat(grid.qmax)
    h = hessian.double()
    if k <= EXHAUSTIVE_UP_TO:
        codes = _exhaustive(scaled, zero, qmin, qmax, h)
    else:
        codes = _column_by_column(scaled, zero, qmin, qmax, h, damp)
    return codes.reshape(weight.shape)


def _exhaustive(scaled, zero, qmin, qmax, h) -> torch.Tensor:
    k = scaled.shape[-1]
    choices = torch.tensor(list(itertools.product((0.0, 1.0), repeat=k)), dtype=torch.float64)  # (2^k, k)
    floor = torch.floor(scaled)
    candidates = torch.clamp(floor[:, :, None] + choices + zero[:, :, None], qmin[:, :, None], qmax[:, :, None])
    error = candidates - zero[:, :, None] - scaled[:, :, None]  # (groups, out, 2^k, k), in steps of the grid
    loss = torch.einsum("gock,gkl,gocl->goc", error, h, error)
    best = loss.argmin(-1)
    return torch.gather(candidates, 2, best[:, :, None, None].expand(-1, -1, 1, k))[:, :, 0]


def _inverse_upper_factor(h: torch.Tensor) -> torch.Tensor:
    """The upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``) per group, from one factorization: with
    ``J`` the order-reversing permutation, ``J chol(J H J) J`` is an upper ``R`` with ``H = R R^T``, so
    ``H^-1 = R^-T R^-1`` and ``U = R^-1`` (upper, positive diagonal: the unique factor). Cheaper than
    inverting ``H`` and factorizing the inverse."""
    r = torch.flip(torch.linalg.cholesky(torch.flip(h, dims=(-2, -1))), dims=(-2, -1))
    eye = torch.eye(h.shape[-1], dtype=h.dtype).expand_as(h)
    return torch.linalg.solve_triangular(r, eye, upper=True)


def _column_by_column(scaled, zero, qmin, qmax, h, damp) -> torch.Tensor:
    groups, _, k = scaled.shape
    diag = torch.diagonal(h, dim1=1, dim2=2)
    order = torch.argsort(diag, dim=1, descending=True)  # the columns that matter most go first
    undo = torch.argsort(order, dim=1)
    h = torch.gather(torch.gather(h, 1, order[:, :, None].expand(-1, -1, k)), 2, order[:, None, :].expand(-1, k, -1))
    w = torch.gather(scaled, 2, order[:, None, :].expand_as(scaled)).clone()
    zero, qmin, qmax = (torch.gather(t, 2, order[:, None, :].expand_as(t)) for t in (zero, qmin, qmax))
    h = h + damp * diag.mean(1).clamp(min=1e-12)[:, None, None] * torch.eye(k, dtype=h.dtype)
    upper = _inverse_upper_factor(h).numpy()
    # the column loop runs on numpy arrays: thousands of steps on a few hundred numbers each, where a torch
    # call's fixed cost outweighs its work; columns are made contiguous (groups, K, out)
    w, zero, qmin, qmax = (t.transpose(1, 2).contiguous().numpy() for t in (w, zero, qmin, qmax))
    codes = np.empty_like(w)
    for start in range(0, k, BLOCK):
        end = min(start + BLOCK, k)
        block = w[:, start:end]  # a view: the block's columns are updated in place
        errors = np.empty_like(block)
        for i in range(end - start):
            j = start + i
            code = np.clip(np.rint(block[:, i] + zero[:, j]), qmin[:, j], qmax[:, j])
            codes[:, j] = code
            error = (block[:, i] - (code - zero[:, j])) / upper[:, j, j][:, None]
            block[:, i + 1:] -= upper[:, j, j + 1:end, None] * error[:, None, :]
            errors[:, i] = error
        w[:, end:] -= np.matmul(upper[:, start:end, end:].transpose(0, 2, 1), errors)
    codes = torch.from_numpy(codes).transpose(1, 2)
    return torch.gather(codes, 2, undo[:, None, :].expand_as(codes))
