"""Running qcompile on many processes with torch.distributed (``torchrun``).

* :mod:`.world`: the process group, collectives that are identities in one
  process, and failing together.
* :mod:`.shards`: which batches and samples each rank works on.
* :mod:`.batch_norm`: batch normalization over the global batch, on CPUs too.

docs/distributed.md is the user's guide.
"""

from qcompile.distributed.world import AgreedFailure, World, single_process, world_from_environment

__all__ = ["AgreedFailure", "World", "single_process", "world_from_environment"]
