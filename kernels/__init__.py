"""GEMMLOWP-style integer kernels (imported as ``qcompile.kernels``)."""
