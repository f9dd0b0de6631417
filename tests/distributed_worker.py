"""Training run for tests/test_distributed.py, started once alone and once under torchrun.

``python tests/distributed_worker.py OUT QAT`` trains the real Fashion-MNIST
ResNet-20 for one epoch (256 samples, global batches of 64) with qcompile's
built-in loop, float (QAT=0: BatchNorm in training mode) or quantization-aware
(QAT=1), and rank 0 saves the trained tensors and the epoch record to OUT.
"""

from __future__ import annotations

import sys

import torch

from qcompile.data import open_data
from qcompile.distributed import world_from_environment
from qcompile.frontend.loaders import load_model
from qcompile.frontend.lower import lower
from qcompile.pipeline import run_pipeline
from qcompile.training import fit


def main(out: str, qat: bool) -> None:
    world = world_from_environment()
    loaded = load_model("zoo:resnet20_fashion")
    graph = lower(loaded.module, loaded.example_inputs)
    if qat:
        run_pipeline(graph, "qat")
    data = open_data("builtin:fashion-train", limit=256, batch_size=64)
    history = fit(graph, data, epochs=1, lr=0.05, world=world)
    if world.is_main:
        torch.save({"params": dict(graph.params), "history": history}, out)
    world.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "1")
