"""The integer backends a quantized graph is lowered to, and what each computes exactly.

* :mod:`.grids`: the grids each backend's kernels compute exactly;
* :mod:`.gemmlowp`: the integer stage on qcompile's own kernels;
* :mod:`.torch_ao`: torch's quantized modules and tensors (the ``native`` backend);
* :mod:`.channels_last`: the view-as-reshape both need.

Nothing is imported here (the IR registers torch's packed modules from
:mod:`.torch_ao` without loading the rest).
"""
