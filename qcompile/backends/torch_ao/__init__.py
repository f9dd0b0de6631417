"""The ``native`` backend: torch's quantized modules and tensors (``torch.ao``), deprecated upstream.

PyTorch deprecated its quantized tensors (``quint8``, ``qint8``,
``quantize_per_tensor``, ...) in May 2026 (pytorch issue 184982). This
package is, with the dynamic-quantization path (``passes/dynamic.py``,
:mod:`qcompile.quant.embedding`, :mod:`qcompile.nn.int8_bags` and their ONNX
writers, which run torch's dynamic int8 modules), the only place qcompile
names them:

* :mod:`.lowering`: the rules that put a decided graph on torch's modules;
* :mod:`.tensors`: torch's quantized tensors as qcompile reads and makes
  them (dtypes, codes, per-channel grids);
* :mod:`.packed_modules`: torch's quantized modules rebuilt from a graph's
  attributes and tensors (their weights live packed inside them);
* :mod:`.int4`: 4-bit weights of torch's quantized modules packed two to a
  byte in saved files;
* :mod:`.transposed_probe`: whether this torch build's int8 transposed
  convolutions compute correctly, asked once;
* :mod:`.warnings`: torch's deprecation warnings about all of the above,
  silenced where qcompile has already said so.

Nothing is imported here: the modules are imported where they are needed.
"""
