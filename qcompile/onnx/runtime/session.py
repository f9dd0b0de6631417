"""An ONNX file run by onnxruntime, called like a module: tensors in, tensors out.

This is how qcompile's ONNX exports are deployed on CPUs and how
``qcompile compare`` times them next to the PyTorch modules.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qcompile.errors import QCompileError

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


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


def in_memory_session(model, threads: int = 1, optimize: bool = True, log_severity: int = 3):
    """An onnxruntime session of an in-memory ``onnx.ModelProto`` that qcompile builds for its own
    measurements, with :func:`session_options`; ``log_severity`` 3 keeps onnxruntime's warnings out
    of the user's output (4: its errors too, for a caller that reports them itself)."""
    import onnxruntime as ort

    options = session_options(threads, optimize)
    options.log_severity_level = log_severity
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class OnnxModel:
    """``OnnxModel(path, threads)(x, ...)`` runs an ONNX model through onnxruntime's CPU provider.

    Called like the module it was exported from: one tensor per model input;
    returns a tensor, or a tuple of them for a model with several outputs.
    """

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
        self.inputs = [(i.name, i.shape) for i in self.session.get_inputs()]
        self.dtypes = [_NUMPY_TYPES.get(i.type, np.float32) for i in self.session.get_inputs()]
        self.outputs = len(self.session.get_outputs())

    def __call__(self, *xs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(xs) != len(self.inputs):
            raise QCompileError(f"{self.path.name} takes {len(self.inputs)} inputs, got {len(xs)}",
                                hint="give one tensor per model input, in the model's order")
        for x, (name, shape), dtype in zip(xs, self.inputs, self.dtypes, strict=True):
            self._check(x, shape)
            if dtype is not np.float32 and x.is_floating_point():
                raise QCompileError(f"{self.path.name}'s input {name!r} takes integers (token ids), not {x.dtype}",
                                    hint="pass the integer tensor the model was compiled with")
        feeds = {name: x.detach().contiguous().numpy().astype(dtype, copy=False)
                 for x, (name, _), dtype in zip(xs, self.inputs, self.dtypes, strict=True)}
        results = tuple(torch.from_numpy(r) for r in self.session.run(None, feeds))
        return results[0] if self.outputs == 1 else results

    def _check(self, x: torch.Tensor, shape: list) -> None:
        fixed = [(i, d) for i, d in enumerate(shape) if isinstance(d, int)]
        if x.dim() != len(shape) or any(x.shape[i] != d for i, d in fixed):
            expected = ", ".join(str(d) if isinstance(d, int) else "N" for d in shape)
            raise QCompileError(f"{self.path.name} takes inputs of shape [{expected}], not {list(x.shape)}",
                                hint="use the data (and --preprocess preset) the model was compiled for")

    def eval(self) -> OnnxModel:  # so that it stands in for a module
        return self
