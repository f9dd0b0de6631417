"""Model frontends: tracing and lowering to the IR, and loading model files."""
