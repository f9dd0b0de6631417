"""ONNX export from the IR (writers here, emitters by op name) and, in ``runtime/``, the onnxruntime cross-check."""
