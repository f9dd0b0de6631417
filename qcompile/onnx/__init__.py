"""ONNX export from the IR and the onnxruntime cross-check."""
