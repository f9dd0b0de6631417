"""Modules qcompile emits into graphs: fake quantization for quantization-aware training."""
