"""Training a graph: for quantization-aware training (and any fine-tuning).

The graph becomes a real ``nn.Module`` through codegen (the same source a user
would get), trains with autograd, and its tensors are written back into the
graph afterwards::

    module, param_map = trainable(graph)
    ...train module with your own loop...
    write_back(graph, module, param_map)

:func:`fit` is the built-in loop: SGD with momentum and cross-entropy on a
labelled data source. Given a distributed ``world`` (``torchrun``), it trains
data parallel: each rank takes its slice of every global batch
(:func:`qcompile.distributed.shards.training_batches`), BatchNorm and the
fake-quantization ranges use the statistics of the whole global batch, and
``DistributedDataParallel`` averages the gradients, scaled so that each step
is the step one process takes on the global batch (equal within float
rounding). Every rank ends with the same trained graph.
"""

from __future__ import annotations

import sys
import types
import uuid
from collections.abc import Callable

import torch
from torch import nn

from qcompile.codegen import emit_python
from qcompile.distributed import World, single_process
from qcompile.distributed.batch_norm import with_global_batch_norm
from qcompile.distributed.shards import training_batches
from qcompile.errors import QCompileError
from qcompile.ir.graph import Graph


def trainable(graph: Graph) -> tuple[nn.Module, dict[str, str]]:
    """An ``nn.Module`` computing ``graph``, with its own copies of the graph's tensors."""
    emitted = emit_python(graph)
    name = f"qcompile_trainable_{uuid.uuid4().hex}"
    namespace = types.ModuleType(name)
    sys.modules[name] = namespace
    exec(compile(emitted.source, f"<{graph.name} (trainable)>", "exec"), namespace.__dict__)  # noqa: S102
    module = getattr(namespace, emitted.class_name)()
    module.load_state_dict({k: v.detach().clone() for k, v in emitted.state_dict.items()})
    for parameter in module.parameters():
        parameter.requires_grad_(True)
    return module, emitted.param_map


def write_back(graph: Graph, module: nn.Module, param_map: dict[str, str]) -> None:
    """Store ``module``'s trained tensors (and BN / fake-quant buffers) into ``graph``."""
    state = module.state_dict()
    for key, param in param_map.items():
        graph.params[param] = state[key].detach().clone()


def fit(graph: Graph, data, *, epochs: int = 1, lr: float = 0.01, momentum: float = 0.9,
        progress: Callable[[str, int, int | None], None] | None = None,
        log: Callable[[str], None] | None = None, world: World | None = None) -> list[dict[str, float]]:
    """Train ``graph`` in place on labelled ``data`` with SGD and cross-entropy.

    Returns one record per epoch: mean loss and training accuracy (over every rank's samples).
    """
    world = world or single_process()
    if getattr(data, "labels", None) is None:
        name = getattr(data, "name", "the data")
        raise QCompileError(
            f"training needs labelled data; {name} has no labels",
            hint="an image folder with one sub-folder per class, an .npz / .pt file with 'x' and 'y', a "
            "module:function returning (x, y) tensors (not a list of batches), or builtin:fashion-train")
    module, param_map = trainable(graph)
    model: nn.Module = module
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        module = with_global_batch_norm(module)
        model = DistributedDataParallel(module, broadcast_buffers=False)  # buffers stay equal: see above
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    history = []
    total = len(data)
    for epoch in range(epochs):
        model.train()
        tally = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, seen
        for step, (x, y, global_count) in enumerate(training_batches(data, world), start=1):
            optimizer.zero_grad()
            out = model(x)
            loss = loss_fn(out, y)
            # DDP averages gradients over ranks: scale so that the average is the global batch's mean
            (loss * (world.size / global_count)).backward()
            optimizer.step()
            tally += torch.tensor([float(loss.detach()), int((out.argmax(1) == y).sum()), len(y)],
                                  dtype=torch.float64)
            if progress:
                progress(f"train epoch {epoch + 1}/{epochs}", step, total)
        loss_sum, correct, seen = world.all_reduce(tally).tolist()
        record = {"epoch": epoch + 1, "loss": loss_sum / seen, "accuracy": correct / seen}
        history.append(record)
        if log:
            log(f"epoch {epoch + 1}: loss {record['loss']:.4f}, train accuracy {record['accuracy']:.4f}")
    module.eval()
    write_back(graph, module, param_map)
    return history
