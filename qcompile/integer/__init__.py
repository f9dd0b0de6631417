"""The neutral integer stage: quantization fully decided, as plain integer tensors, before any backend.

* :mod:`.stage`: the rewrite from ``convert``'s decisions into the stage;
* :mod:`.reference`: its modules, in exact integer arithmetic: what the
  integer model computes, and what every backend is checked against.

Backends in ``qcompile/backends/`` lower from the stage (``lower``).
"""

# graphs whose values are the stage's plain integer tensors: the stage itself, and its kernels
ON_INTEGER_STAGE = ("reference", "gemmlowp")
# where the stage's modules live (their class names are those of the gemmlowp kernels' modules)
REFERENCE_MODULES = "qcompile.integer.reference"
