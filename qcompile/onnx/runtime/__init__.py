"""The onnxruntime side of the ONNX export: what runs, checks and tunes a written model.

* :mod:`.session`: onnxruntime sessions (from a file or in memory), one thread by default;
* :mod:`.check`: the export run against the emitted PyTorch module, batch by batch;
* :mod:`.layer_agreement`: the same, value by value, to find where the two part;
* :mod:`.verdict`: whether a disagreement is the runtime's rounding or a wrong export;
* :mod:`.narrow_convs`: narrow int8 convolutions rewritten where onnxruntime runs them faster.

The writers in ``qcompile/onnx/`` build models without onnxruntime.
"""
