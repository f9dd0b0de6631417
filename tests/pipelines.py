"""Pipelines the tests name."""

# static int8 on torch's quantized modules: what the tests of torch's engines, of the QOperator ONNX form
# (written from those modules) and of the parity with torch.ao compile (``ptq`` lowers to qcompile's own
# kernels wherever they cover the model)
NATIVE_PTQ = "fuse,calibrate,convert{backend=native}"
