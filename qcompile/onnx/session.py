"""An ONNX file run by onnxruntime, called like a module: tensors in, tensors out.

This is how qcompile's ONNX exports are deployed on CPUs and how
``qcompile compare`` times them next to the PyTorch modules.
"""

from __future__ import annotations

from pathlib import Path

import torch

from qcompile.errors import QCompileError


def session_options(threads: int = 1, optimize: bool = True):
    """onnxruntime's options as qcompile runs models: graph optimizations on (or all off), ``threads``
    intra-op threads, one inter-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


class OnnxModel:
    """``OnnxModel(path, threads)(x)`` runs the model's single input through onnxruntime's CPU provider."""

    def __init__(self, path: str | Path, threads: int = 1, optimize: bool = True):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise QCompileError(f"{self.path} does not exist",
                                hint="pass the .onnx file that `qcompile ... --export onnx -o OUT` wrote (OUT/model.onnx)")
        try:
            self.session = ort.InferenceSession(str(self.path), session_options(threads, optimize),
                                                providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types, all with a message
            raise QCompileError(f"onnxruntime cannot load {self.path}: {str(error).splitlines()[0]}",
                                hint="is it an ONNX model? `qcompile ... --export onnx --check` writes and checks one") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise QCompileError(f"{self.path} has {len(inputs)} inputs; only single-input models run here")
        self.input_name, self.input_shape = inputs[0].name, inputs[0].shape

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return torch.from_numpy(self.session.run(None, {self.input_name: x.detach().float().contiguous().numpy()})[0])

    def _check(self, x: torch.Tensor) -> None:
        fixed = [(i, d) for i, d in enumerate(self.input_shape) if isinstance(d, int)]
        if x.dim() != len(self.input_shape) or any(x.shape[i] != d for i, d in fixed):
            shape = ", ".join(str(d) if isinstance(d, int) else "N" for d in self.input_shape)
            raise QCompileError(f"{self.path.name} takes inputs of shape [{shape}], not {list(x.shape)}",
                                hint="use the data (and --preprocess preset) the model was compiled for")

    def eval(self) -> OnnxModel:  # so that it stands in for a module
        return self
