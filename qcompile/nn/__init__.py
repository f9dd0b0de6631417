"""Modules qcompile emits into graphs: fake quantization for quantization-aware training, int8 embedding bags."""
