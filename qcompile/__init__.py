"""qcompile: a quantization compiler for PyTorch models."""
