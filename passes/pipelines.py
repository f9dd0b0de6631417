"""Named pipelines: short names for the workflows users run most."""

from qcompile.pipeline import register_pipeline

register_pipeline("ptq", "fuse,calibrate,convert", "post-training static int8")
register_pipeline("ptq-torchao", "fuse{activations=relu},calibrate,convert",
                  "static int8 with torch.ao's fusion choices (for one-to-one comparisons)")
register_pipeline("dynamic-int8", "fuse,dynamic", "int8 weights, activations quantized at run time")
register_pipeline("qat-int8", "qat,train,qat-finalize,convert", "quantization-aware training, then int8")
