"""Batch normalization over the global batch, when each rank holds a slice of it.

In data-parallel training each rank sees part of every batch. A plain
BatchNorm would normalize with its slice's mean and variance, and training
would differ from one process on the whole batch. torch's
``nn.SyncBatchNorm`` fixes that on GPUs only; :class:`GlobalBatchNorm` does
it on any device: per channel it all-reduces the sum and count, then the
sum of squared deviations from the global mean, both through an
all-reduce whose backward all-reduces the gradients, so that gradients flow
across ranks. Running statistics update as torch's BatchNorm updates them, with the
global batch's (unbiased) variance. Outside training, or in one process, it
is an ordinary BatchNorm::

    module = with_global_batch_norm(module)   # before DistributedDataParallel(module)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from qcompile.distributed.world import data_parallel


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) with a gradient: every rank's output depends on every rank's input."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        total = grad.clone()
        dist.all_reduce(total)
        return total


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    return _SumOverRanks.apply(x)


class GlobalBatchNorm(_BatchNorm):
    """A BatchNorm of any dimension whose training statistics are those of every rank's samples."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and data_parallel()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local = torch.cat([x.sum(dims), x.new_tensor([x.numel() / x.shape[1]])])
        total = sum_over_ranks(local)
        count = total[-1].detach()
        mean = total[:-1] / count
        centered = x - mean.reshape(shape)
        var = sum_over_ranks(centered.pow(2).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(factor * mean.detach())
                self.running_var.mul_(1 - factor).add_(factor * var.detach() * count / max(float(count) - 1, 1.0))
        y = centered * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y


def with_global_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm replaced by a :class:`GlobalBatchNorm` holding the same tensors."""
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        replacement = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                      module.track_running_stats)
        replacement.load_state_dict(module.state_dict())
        replacement.train(module.training)
        return replacement
    for name, child in module.named_children():
        setattr(module, name, with_global_batch_norm(child))
    return module
