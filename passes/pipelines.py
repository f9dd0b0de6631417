"""Named pipelines: short names for the workflows users run most."""

from qcompile.pipeline import register_pipeline

register_pipeline("ptq", "fuse,equalize,calibrate,convert",
                  "post-training static int8: cross-layer equalization, qcompile's kernels where they cover the model")
register_pipeline("ptq-torchao",
                  "fuse{activations=relu},stubs,observe{activation-grid=preset},calibrate,convert{backend=native}",
                  "static int8 with PyTorch's own fusion choices and grids (for one-to-one comparisons)")
register_pipeline("ptq-accurate", "fuse,equalize,calibrate,adaround,convert",
                  "static int8, most accurate measured: equalization and learned rounding on qcompile's kernels (minutes)")
register_pipeline("dynamic-int8", "fuse,dynamic", "int8 weights, activations quantized at run time")
register_pipeline("qat-int8", "qat,train,qat-finalize,convert", "quantization-aware training, then int8")

# The paper's settings (simulated): naive min/max quantization, and with its methods:
# ACIQ for 4-bit activations, bit allocation and bias correction for 4-bit weights.
_PAPER = {
    "w8a4": ("aciq{bits=4},simulate{bits=4}", "simulate{bits=4}"),
    "w4a8": ("bitalloc{budget=4},simulate{weight-bits=4 bias-correct=mean-std}", "simulate{weight-bits=4}"),
    "w4a4": ("bitalloc{budget=4},aciq{bits=4},simulate{bits=4 weight-bits=4 bias-correct=mean-std}",
             "simulate{bits=4 weight-bits=4}"),
}
for _name, (_methods, _naive) in _PAPER.items():
    register_pipeline(_name, f"fuse,calibrate,{_methods}", f"{_name.upper()} with ACIQ / bit allocation / bias correction")
    register_pipeline(f"{_name}-naive", f"fuse,calibrate,{_naive}", f"{_name.upper()}, min/max only")
