"""Quantization machinery shared by the passes: configs, observers, qparams, op tables."""
