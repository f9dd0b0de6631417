"""The ``native`` backend: torch's quantized modules and tensors (``torch.ao``), deprecated upstream.

PyTorch deprecated its quantized tensors (``quint8``, ``qint8``,
``quantize_per_tensor``, ...) in May 2026 (pytorch issue 184982). This
package is, with the dynamic-quantization path (``passes/dynamic.py``,
:mod:`qcompile.quant.embedding`, :mod:`qcompile.nn.int8_bags` and their ONNX
writers, which run torch's dynamic int8 modules), the only place qcompile
names them:

* :mod:`.lowering`: the rules that put a decided graph on torch's modules;
* :mod:`.tensors`: torch's quantized tensors as qcompile reads and makes
  them (dtypes, codes, per-channel grids).
"""

from qcompile.backends.torch_ao.lowering import RULES, as_torch_weight, convert_dequantize

__all__ = ["RULES", "as_torch_weight", "convert_dequantize"]
