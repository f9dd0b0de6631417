"""Default-pipeline accuracy as a new user gets it: the real MobileNetV2, held-out photo crops.

    python benchmarks/default_accuracy.py [--samples 520] [--json out.json]

Each variant is calibrated on ``builtin:photos`` (the README's main job) and
scored on ``builtin:photo-crops`` (520 other crops of the same photos, none
seen by calibration): top-1 agreement with the float model and output SQNR
against it. Rows: qcompile's default pipeline (``ptq``: equalization, then
``convert{backend=auto}``) and ``fuse,calibrate,convert`` on the native
backend, each also as its ONNX export in onnxruntime; the gemmlowp backend
with and without the preset's 7-bit activation grid
(``observe{activation-grid=preset}``), to show what the backend's own grid
buys; ``aciq``, ``bias-correct``, ``equalize`` and ``adaround`` on both
backends, and at 4-bit weights against round-to-nearest; onnxruntime's
``quantize_static`` with its defaults (QDQ, int8 activations and weights,
per tensor, min/max) after its recommended pre-processing; torch.ao's FX
quantization with its x86 defaults. The table names the CPU. ``--only
TEXT`` (repeatable) runs the variants whose name contains TEXT; ``--only
"float model"`` adds how fragile the samples are: the float model in
bfloat16 and float16, and with only its input on an 8-bit grid.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.int8_latency import quiet  # noqa: E402
from qcompile.codegen import load_model, write_model  # noqa: E402
from qcompile.cpu_features import describe_cpu  # noqa: E402
from qcompile.data import open_data  # noqa: E402
from qcompile.diagnose.metrics import agreement, sqnr_db  # noqa: E402
from qcompile.frontend.loaders import load_model as load_user_model  # noqa: E402
from qcompile.frontend.lower import lower  # noqa: E402
from qcompile.onnx.export import export_onnx  # noqa: E402
from qcompile.onnx.runtime.session import OnnxModel  # noqa: E402
from qcompile.pipeline import PassContext, run_pipeline  # noqa: E402
from qcompile.quant.config import QuantConfig  # noqa: E402

VARIANTS = [  # (row, pipeline)
    ("qcompile ptq (default: backend auto -> gemmlowp)", "ptq"),
    ("qcompile ptq, native backend", "fuse,calibrate,convert{backend=native}"),
    ("qcompile ptq, gemmlowp backend", "fuse,calibrate,convert{backend=gemmlowp}"),
    ("qcompile ptq, gemmlowp, preset's 7-bit grid", "fuse,stubs,observe{activation-grid=preset},calibrate,"
                                                     "convert{backend=gemmlowp}"),
    ("qcompile aciq, gemmlowp backend", "fuse,calibrate,aciq,convert{backend=gemmlowp}"),
    ("qcompile bias-correct, gemmlowp backend", "fuse,calibrate,bias-correct,convert{backend=gemmlowp}"),
    ("qcompile aciq + bias-correct, gemmlowp backend",
     "fuse,calibrate,aciq,bias-correct,convert{backend=gemmlowp}"),
    ("qcompile aciq, native backend", "fuse,calibrate,aciq,convert{backend=native}"),
    ("qcompile bias-correct, native backend", "fuse,calibrate,bias-correct,convert{backend=native}"),
    ("qcompile aciq + bias-correct, native backend", "fuse,calibrate,aciq,bias-correct,convert{backend=native}"),
    ("qcompile adaround, native backend", "fuse,calibrate,adaround,convert{backend=native}"),
    ("qcompile adaround, gemmlowp backend", "fuse,calibrate,adaround,convert{backend=gemmlowp}"),
    ("qcompile aciq + adaround, gemmlowp backend", "fuse,calibrate,aciq,adaround,convert{backend=gemmlowp}"),
    ("qcompile W4A8 round-to-nearest, gemmlowp", "fuse,calibrate,convert{backend=gemmlowp weight-bits=4}"),
    ("qcompile W4A8 adaround, gemmlowp", "fuse,calibrate,adaround,convert{backend=gemmlowp weight-bits=4}"),
    # the native backend on full 8-bit activation grids: exact with 7-bit weights on every x86 CPU, with 8-bit
    # weights only on CPUs with VNNI
    ("qcompile native, full 8-bit activations, 7-bit weights",
     "fuse,stubs,observe{activation-grid=full},calibrate,convert{backend=native weight-bits=7}"),
    ("qcompile native, full 8-bit activations, 8-bit weights (VNNI only)",
     "fuse,stubs,observe{activation-grid=full},calibrate,convert{backend=native}"),
    # cross-layer equalization, alone and with the other methods
    ("qcompile equalize, native backend", "fuse,equalize,calibrate,convert{backend=native}"),
    ("qcompile equalize + aciq, native backend", "fuse,equalize,calibrate,aciq,convert{backend=native}"),
    ("qcompile equalize, gemmlowp backend", "fuse,equalize,calibrate,convert{backend=gemmlowp}"),
    ("qcompile equalize + aciq, gemmlowp backend", "fuse,equalize,calibrate,aciq,convert{backend=gemmlowp}"),
    ("qcompile equalize + bias-correct, gemmlowp backend",
     "fuse,equalize,calibrate,bias-correct,convert{backend=gemmlowp}"),
    ("qcompile equalize{relu6=relu}, gemmlowp backend",
     "fuse,equalize{relu6=relu},calibrate,convert{backend=gemmlowp}"),
    ("qcompile equalize + adaround, gemmlowp backend",
     "fuse,equalize,calibrate,adaround,convert{backend=gemmlowp}"),
    ("qcompile equalize + adaround + bias-correct, gemmlowp backend",
     "fuse,equalize,calibrate,adaround,bias-correct,convert{backend=gemmlowp}"),
    # adaround's reconstruction on sampled output positions (its default) against whole images (100 steps of
    # 32 images, its earlier default), and how much the agreement moves with the seed and the step count
    ("qcompile equalize + adaround on whole images, gemmlowp backend",
     "fuse,equalize,calibrate,adaround{positions=0 batch-size=32 iterations=100 budget=0},convert{backend=gemmlowp}"),
    ("qcompile equalize + adaround, seed 1, gemmlowp backend",
     "fuse,equalize,calibrate,adaround{seed=1},convert{backend=gemmlowp}"),
    ("qcompile equalize + adaround, 16384 positions x 2000 steps, gemmlowp backend",
     "fuse,equalize,calibrate,adaround{positions=16384 iterations=2000 budget=0},convert{backend=gemmlowp}"),
    ("qcompile W4A8 adaround on whole images, gemmlowp",
     "fuse,calibrate,adaround{positions=0 batch-size=32 iterations=100 budget=0},convert{backend=gemmlowp weight-bits=4}"),
    # second-order rounding on each layer's input statistics (GPTQ; every floor / ceiling choice for
    # depthwise filters): no optimizer, seconds instead of minutes
    ("qcompile gptq, gemmlowp backend", "fuse,calibrate,gptq,convert{backend=gemmlowp}"),
    ("qcompile equalize + gptq, gemmlowp backend", "fuse,equalize,calibrate,gptq,convert{backend=gemmlowp}"),
    ("qcompile W4A8 gptq, gemmlowp", "fuse,calibrate,gptq,convert{backend=gemmlowp weight-bits=4}"),
    # block reconstruction (BRECQ, QDrop), 100 steps of 8 images; 8-bit grids keep their calibrated steps
    # unless learn-grids=all
    ("qcompile equalize + brecq, gemmlowp backend",
     "fuse,equalize,calibrate,brecq{iterations=100 batch-size=8},convert{backend=gemmlowp}"),
    ("qcompile equalize + brecq with learned 8-bit grids, gemmlowp backend",
     "fuse,equalize,calibrate,brecq{iterations=100 batch-size=8 learn-grids=all},convert{backend=gemmlowp}"),
    ("qcompile W4A8 equalize + brecq with learned 8-bit grids, gemmlowp",
     "fuse,equalize,calibrate,brecq{iterations=100 batch-size=8 learn-grids=all},convert{backend=gemmlowp weight-bits=4}"),
    # per-tensor weights (one grid for all of a layer's channels): what equalization is for
    ("qcompile ptq, per-tensor weights, gemmlowp backend", "fuse,calibrate,convert{backend=gemmlowp}"),
    ("qcompile equalize, per-tensor weights, gemmlowp backend",
     "fuse,equalize,calibrate,convert{backend=gemmlowp}"),
]
# how fragile the scored samples are: the float model itself in lower precision, and only its input on an
# 8-bit grid (per tensor, over the samples' range)
FLOAT_REFERENCES = ["float model in bfloat16", "float model in float16", "float model, input on an 8-bit grid"]
EXPORTED = {VARIANTS[0][0], VARIANTS[1][0]}  # rows also scored as their ONNX export, in onnxruntime
PER_TENSOR_WEIGHTS = "per-tensor weights"  # rows whose name says this quantize each weight on one grid


def _config(name: str) -> QuantConfig:
    config = QuantConfig()
    if PER_TENSOR_WEIGHTS in name:
        weight = dataclasses.replace(config.qconfig.weight, per_channel=False)
        config.qconfig = dataclasses.replace(config.qconfig, weight=weight)
    return config


def _run_batches(model, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(images[i:i + batch]) for i in range(0, len(images), batch)])


def float_reference(name: str, model, evaluation: torch.Tensor) -> torch.Tensor:
    """One of :data:`FLOAT_REFERENCES`: the float model's outputs with only that change."""
    if "input on an 8-bit grid" in name:
        lo, hi = evaluation.min(), evaluation.max()
        step = (hi - lo) / 255
        return _run_batches(model, torch.round((evaluation - lo) / step) * step + lo)
    dtype = torch.bfloat16 if "bfloat16" in name else torch.float16
    return _run_batches(copy.deepcopy(model).to(dtype), evaluation.to(dtype)).float()


def onnxruntime_default(model, calib: list, evaluation: torch.Tensor, tmp: Path) -> torch.Tensor:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_path, prepared, int8_path = tmp / "float.onnx", tmp / "prepared.onnx", tmp / "ort_int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (calib[0][:1],), str(float_path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": b.numpy()} for b in calib])

        def get_next(self):
            return next(self.batches, None)

    quant_pre_process(str(float_path), str(prepared))
    quantize_static(str(prepared), str(int8_path), Reader())  # onnxruntime's defaults
    session = OnnxModel(int8_path, 1).session
    outs = [session.run(None, {"x": evaluation[i:i + 64].numpy()})[0] for i in range(0, len(evaluation), 64)]
    return torch.from_numpy(np.concatenate(outs))


def torchao_fx(model, calib: list):
    """torch.ao's FX post-training quantization with its x86 defaults (deprecated upstream; a reference)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (calib[0][:1],))
        with torch.no_grad():
            for batch in calib:
                prepared(batch)
        return convert_fx(prepared)


# model -> (calibration data, how many of its samples, held-out data: the rest of it, or another set)
DATA = {"mobilenet_v2": ("builtin:photos", None, "builtin:photo-crops"),
        "digit_cnn": ("builtin:mnist5k", 512, "builtin:mnist5k")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(DATA), default="mobilenet_v2",
                        help="mobilenet_v2 (photos, agreement only) or digit_cnn (labelled MNIST-5k: top-1 too)")
    parser.add_argument("--samples", type=int, default=520, help="held-out samples scored (520 crops at most)")
    parser.add_argument("--json")
    parser.add_argument("--only", metavar="TEXT", action="append", default=[],
                        help="run only the variants whose name contains TEXT (repeatable; onnxruntime's and "
                        "torch.ao's rows always run)")
    args = parser.parse_args()
    quiet()
    torch.set_num_threads(2)
    calib_data, calib_samples, held_out = DATA[args.model]
    model = load_user_model(f"zoo:{args.model}").module
    calib = [b[0] for b in open_data(calib_data, batch_size=32, limit=calib_samples)]
    source = open_data(held_out, batch_size=64, limit=args.samples, skip=calib_samples or 0)
    if source.labels is not None:
        pairs = list(source.labelled())
        evaluation, labels = torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])
    else:
        evaluation, labels = torch.cat([b[0] for b in source]), None
    reference = _run_batches(model, evaluation)
    rows = []

    def record(name: str, out: torch.Tensor) -> None:
        top1 = None if labels is None else float((out.argmax(1) == labels).float().mean())
        rows.append({"variant": name, "agreement": agreement(out, reference), "sqnr_db": sqnr_db(out, reference),
                     "top1": top1})
        digits = 3 if labels is None else 4  # thousands of labelled samples: a fourth digit is meaningful
        print(f"| {name} | {rows[-1]['agreement']:.{digits}f} | {rows[-1]['sqnr_db']:.1f} |"
              + ("" if top1 is None else f" {top1:.4f} |"), flush=True)

    print(f"{args.model}, calibrated on {calib_data} ({sum(len(b) for b in calib)} samples), scored on "
          f"{len(evaluation)} held-out samples of {held_out}; CPU: {describe_cpu()}\n")
    if labels is not None:
        print(f"float top-1 accuracy: {float((reference.argmax(1) == labels).float().mean()):.4f}\n")
    print("| variant | top-1 agreement with float | SQNR vs float (dB) |" + ("" if labels is None else " top-1 |")
          + "\n|---|---|---|" + ("" if labels is None else "---|"))
    for name in FLOAT_REFERENCES:
        if any(text in name for text in args.only):
            record(name, float_reference(name, model, evaluation))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, pipeline in VARIANTS:
            if args.only and not any(text in name for text in args.only):
                continue
            graph = lower(model, (calib[0][:1],))
            context = PassContext(calib_data=[(b,) for b in calib], quant_config=_config(name))
            run_pipeline(graph, pipeline, context)
            out_dir = tmp / name.replace(" ", "_").replace(",", "").replace("'", "")
            write_model(graph, out_dir)
            record(name, _run_batches(load_model(out_dir), evaluation))
            if name in EXPORTED:
                path = export_onnx(graph, out_dir / "model.onnx")
                session = OnnxModel(path, 1).session
                feed = session.get_inputs()[0].name
                outs = [session.run(None, {feed: evaluation[i:i + 64].numpy()})[0]
                        for i in range(0, len(evaluation), 64)]
                record(f"{name}, ONNX export in onnxruntime", torch.from_numpy(np.concatenate(outs)))
        record("onnxruntime quantize_static, defaults", onnxruntime_default(model, calib, evaluation, tmp))
        try:
            record("torch.ao FX, x86 defaults", _run_batches(torchao_fx(model, calib), evaluation))
        except RuntimeError as exc:  # the digit CNN's x.view() on the channels-last output of torch's int8 convs
            print(f"| torch.ao FX, x86 defaults | fails: {str(exc).splitlines()[0][:60]}... | |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": describe_cpu(), "samples": len(evaluation), "rows": rows},
                                              indent=1))


if __name__ == "__main__":
    main()
