"""Latency of int8 models: qcompile vs torch.ao FX vs onnxruntime's quantize_static vs OpenVINO, and float.

    python benchmarks/int8_latency.py [--models resnet18 mobilenet_v2 digit_cnn] [--repeats 30] [--json out.json]

Each row times every model of the row in one process, in rounds: each round
runs each model three times untimed, then ``--repeats / rounds`` times timed, so
that a slow spell of this shared machine falls on all of them alike; the
table reports medians as ratios against the float model of the same row.
Float is the fair baseline: the fused graph (BatchNorm folded) in
channels-last memory (the seed CNN, whose ``x.view()`` needs the standard
layout, in that). The seed CNN (``zoo:digit_cnn``) is calibrated and timed on
MNIST digits, the others on the bundled photos; torch.ao runs it with its
``view`` as ``reshape`` (see :func:`views_as_reshapes`). qcompile's int8 graph runs three ways: the emitted
PyTorch module on the native backend (torch's x86 kernels), the gemmlowp
backend (qcompile's own integer kernels, bit-exact with gemmlowp), and its
QDQ ONNX export (``--export onnx``) in onnxruntime, exported for each row
as a deployment at that batch size and thread count would be
(``--onnx-narrow-convs measure``: the network's first convolution padded or
rewritten as space-to-depth only if that makes the whole model measurably
faster there; the decisions are printed at the end). The target column is the
fastest of torch.ao FX x86, onnxruntime's ``quantize_static`` model and
OpenVINO's int8 model (``nncf.quantize`` with its defaults on the same
calibration images; where ``requirements/benchmarks.txt`` is installed);
"best / target" is the target's time over the fastest qcompile variant's
(1.00x or more meets the target); "paired" measures the same ratio again,
the two timed head to head in adjacent pairs of calls (``qcompile/timing.py``),
at the 10th percentile of each one's times, with a bootstrap 95% interval. Effective GOPS count two operations per
multiply-accumulate of the convolutions and linears, against this CPU's
AVX2 int8 peak (the ``vpmaddubsw`` sequence), measured per core by
``benchmarks/int8_peak.py``: a VNNI CPU's kernels run above it. Also measures calibration
throughput (images/s) of qcompile and torch.ao with the same observers (x86
preset: histogram activations), each after a run that is not timed.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.int8_peak import peak_gops_per_core  # noqa: E402
from qcompile.codegen import load_model, write_model  # noqa: E402
from qcompile.data import open_data  # noqa: E402
from qcompile.frontend.loaders import load_model as load_user_model  # noqa: E402
from qcompile.frontend.lower import lower  # noqa: E402
from qcompile.ir import NodeKind  # noqa: E402
from qcompile.onnx.export import export_onnx  # noqa: E402
from qcompile.onnx.runtime.narrow_convs import recorded  # noqa: E402
from qcompile.onnx.runtime.session import OnnxModel  # noqa: E402
from qcompile.pipeline import PassContext, run_pipeline  # noqa: E402
from qcompile.quant.config import QuantConfig  # noqa: E402
from qcompile.timing import head_to_head_resolved  # noqa: E402
from tests.models import randomize_batch_norm  # noqa: E402
from tests.torchao_reference import fx_quantize  # noqa: E402


def macs(graph) -> int:
    """Multiply-accumulates of conv and linear nodes for the graph's example batch of 1."""
    total = 0
    for node in graph.find(kind=NodeKind.MODULE):
        if node.op == "conv2d":
            out = node.type.numel
            k = node.attrs["kernel_size"]
            total += out * node.attrs["in_channels"] // node.attrs["groups"] * k[0] * k[1]
        elif node.op == "linear":
            total += node.type.numel * node.attrs["in_features"]
    return total


def median_ms(fn, repeats: int) -> float:
    return interleaved_medians_ms({"fn": fn}, repeats)["fn"]


def interleaved_medians_ms(fns: dict, repeats: int, rounds: int = 5, settle: int = 3) -> dict:
    """Median milliseconds of each function over ``repeats`` timed calls, taken in rounds across all of them.

    Each round calls each function ``settle`` times untimed, then times
    ``repeats / rounds`` calls. The untimed calls matter: with one per
    round, torch's native MobileNetV2 (batch 1, two threads) measured 12% and
    37% slower interleaved with an onnxruntime session than alone (the
    sessions' workers spin on the same two cores); with three, 2%. The order
    turns by one each round, so that no function always runs right after the
    same other one: at batch 1 on two threads, of two onnxruntime sessions
    of the same MobileNetV2 graph, whichever ran second in every round
    measured 2-12% slower.
    """
    for fn in fns.values():
        for _ in range(2):
            fn()
    times = {name: [] for name in fns}
    rounds = max(1, min(rounds, repeats))
    for r in range(rounds):
        count = repeats // rounds + (r < repeats % rounds)
        order = list(fns.items())
        for name, fn in order[r % len(order):] + order[:r % len(order)]:
            for _ in range(settle):
                fn()
            for _ in range(count):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def onnxruntime_int8(model, calib, tmp: Path, threads: int):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_path, int8_path = tmp / "float.onnx", tmp / "int8.onnx"
    prepared_path = tmp / "float_prepared.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (calib[0][0][:1],), str(float_path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": b[0].numpy()} for b in calib])

        def get_next(self):
            return next(self.batches, None)

    # onnxruntime's recommended pre-processing: shape inference and graph optimisation (BN folding)
    quant_pre_process(str(float_path), str(prepared_path))
    quantize_static(str(prepared_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return ort_session(int8_path, threads)


# `ptq --backend native`: the native backend's pipeline (ptq alone puts the models these benchmarks time on
# qcompile's kernels, which export in QDQ form only)
NATIVE_PTQ = "fuse,equalize,calibrate,convert{backend=native}"


def openvino_int8(model, calib, batch: int, threads: int):
    """OpenVINO's int8 model as its documentation makes one: ``openvino.convert_model`` of the float model,
    ``nncf.quantize`` with its defaults on the same calibration images, compiled for the CPU at a static
    ``batch`` with ``threads`` inference threads and the latency hint; a callable of an input batch. None where
    openvino and nncf are not installed (``pip install -r requirements/benchmarks.txt``)."""
    try:
        import nncf
        import openvino
    except ImportError:
        return None
    example = calib[0][0][:1]
    float_model = openvino.convert_model(model.eval(), example_input=example)
    images = [image[None].numpy() for b in calib for image in b[0]]
    quantized = nncf.quantize(float_model, nncf.Dataset(images), subset_size=len(images))
    quantized.reshape({0: [batch, *example.shape[1:]]})
    compiled = openvino.Core().compile_model(quantized, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                                "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x.numpy()})


def ort_session(path: Path, threads: int):
    """An onnxruntime session as qcompile runs its exports (graph optimizations on, ``threads`` intra-op)."""
    return OnnxModel(path, threads).session


def quiet() -> None:
    """No warnings, and no onnxruntime.quantization log lines (it logs through the root logger)."""
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)


def photo_split() -> tuple[list, torch.Tensor]:
    """The bundled photos' calibration batches and evaluation images (different crops)."""
    calib_source, eval_source = open_data("builtin:photos", batch_size=16).interleaved_split()
    return list(calib_source), torch.cat([b[0] for b in eval_source])


def build(name: str):
    """The real MobileNetV2, or a torchvision model with random weights.

    Random weights come with randomized BatchNorm statistics: with torch's
    initial ones (mean 0, variance 1) the logits of the deeper families nearly
    vanish and agreement with float says nothing. Latency does not depend on
    them (fuse folds BatchNorm into the convolutions).
    """
    if name in ("mobilenet_v2", "digit_cnn"):  # the digit CNN: the seed CNN, trained on MNIST
        return load_user_model(f"zoo:{name}").module
    torch.manual_seed(0)
    return randomize_batch_norm(torchvision.models.get_model(name))


# the calibration and timing data of each model (else builtin:photos)
DATA = {"digit_cnn": "builtin:mnist5k"}


def views_as_reshapes(model):
    """``model`` traced with ``x.view(...)`` as ``x.reshape(...)``: torch.ao's x86 convolutions return
    channels-last tensors, on which the seed CNN's ``view`` fails (a torch.ao user must make this change)."""
    traced = torch.fx.symbolic_trace(model)
    for node in traced.graph.nodes:
        if node.op == "call_method" and node.target == "view":
            node.target = "reshape"
    traced.recompile()
    return traced


def float_layout(model, x) -> torch.memory_format:
    """channels-last, the faster layout of torch's float convolutions, unless the model cannot run in it (the
    seed CNN's ``x.view()`` needs the standard layout); ``model`` is left in the layout returned."""
    try:
        with torch.no_grad():
            model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    except RuntimeError:
        model.to(memory_format=torch.contiguous_format)
        return torch.contiguous_format
    return torch.channels_last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2", "digit_cnn"])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--pairs", type=int, default=100,
                        help="adjacent pairs of calls timed head to head, best qcompile variant against the target, "
                             "in rounds of this many while the interval holds 1")
    parser.add_argument("--max-pairs", type=int, default=300, help="most pairs timed head to head")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--json")
    args = parser.parse_args()
    quiet()
    rows, calibration = [], []
    from qcompile.kernels.host_conv import byte_isa

    from qcompile.cpu_features import describe_cpu

    print(f"CPU: {describe_cpu()}; torch's engine: x86 ({torch.backends.cpu.get_cpu_capability()}); qcompile "
          f"gemmlowp: the CPU twin, byte form in {byte_isa()}\n")
    print("| model | batch | threads | float ms | torch.ao x86 | onnxruntime QDQ | OpenVINO (nncf) | qcompile native "
          "| qcompile gemmlowp | qcompile -> onnxruntime | native GOPS (% peak) | best / target | paired, 95% "
          "| gemmlowp / torch.ao, paired |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        model = build(name)
        calib = list(open_data(DATA.get(name, "builtin:photos"), batch_size=16, limit=64))
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            float_graph = lower(model, (calib[0][0][:1],))
            run_pipeline(float_graph, "fuse")
            write_model(float_graph, tmp / "float")
            fair_float = load_model(tmp / "float")
            layout = float_layout(fair_float, calib[0][0][:1])
            # the calibrations are timed warm (a process's first run pays one-time costs): qcompile's after the
            # gemmlowp model's pipeline, torch.ao's after an untimed run of its own
            twin_graph = lower(model, (calib[0][0][:1],))
            run_pipeline(twin_graph, "fuse,calibrate,convert{backend=gemmlowp}",
                         PassContext(calib_data=calib, quant_config=QuantConfig.from_preset("x86")))
            write_model(twin_graph, tmp / "gemmlowp")
            twin = load_model(tmp / "gemmlowp")
            graph = lower(model, (calib[0][0][:1],))
            start = time.perf_counter()
            run_pipeline(graph, NATIVE_PTQ, PassContext(calib_data=calib, quant_config=QuantConfig.from_preset("x86")))
            qcompile_calib = time.perf_counter() - start
            write_model(graph, tmp / "int8")
            ours = load_model(tmp / "int8")
            reshaping = views_as_reshapes(model)  # the model a torch.ao user quantizes
            fx_quantize(reshaping, calib, "x86")
            start = time.perf_counter()
            theirs = fx_quantize(reshaping, calib, "x86")
            torchao_calib = time.perf_counter() - start
            images = sum(len(b[0]) for b in calib)
            calibration.append(dict(model=name, images=images, qcompile_images_per_s=images / qcompile_calib,
                                    torchao_images_per_s=images / torchao_calib))
            work = macs(float_graph)
            for threads in args.threads:
                torch.set_num_threads(threads)
                session = onnxruntime_int8(model, calib, tmp, threads)
                for batch in (1, 8):
                    # deployed as a user who knows the batch and threads would: --onnx-narrow-convs measure
                    exported = export_onnx(graph, tmp / f"qcompile_int8_{batch}_{threads}.onnx", narrow_convs="measure",
                                           threads=threads, batch=batch)
                    decisions = "; ".join(r.describe() for r in recorded(onnx.load(str(exported))))
                    our_session = ort_session(exported, threads)
                    x = torch.cat([b[0] for b in calib])[:batch].contiguous()
                    feed = {"x": x.numpy()}
                    our_feed = {our_session.get_inputs()[0].name: x.numpy()}
                    fns = {"float": partial(fair_float, x.contiguous(memory_format=layout)),
                           "torchao": partial(theirs, x), "ort": partial(session.run, None, feed),
                           "native": partial(ours, x), "gemmlowp": partial(twin, x),
                           "onnx": partial(our_session.run, None, our_feed)}
                    openvino_model = openvino_int8(model, calib, batch, threads)
                    if openvino_model is not None:
                        fns["openvino"] = partial(openvino_model, x)
                    with torch.no_grad():
                        t = interleaved_medians_ms(fns, args.repeats)
                        gops = 2 * work * batch / (t["native"] / 1000) / 1e9
                        peers = [k for k in ("torchao", "ort", "openvino") if k in t]
                        target = min(t[k] for k in peers)
                        best = min(("native", "gemmlowp", "onnx"), key=t.get)
                        rival = min(peers, key=t.get)
                        paired = head_to_head_resolved(fns[best], fns[rival], args.pairs, args.max_pairs)
                        gemmlowp_paired = head_to_head_resolved(fns["gemmlowp"], fns["torchao"], args.pairs,
                                                                args.max_pairs)
                    row = dict(model=name, batch=batch, threads=threads, float_ms=t["float"], torchao_ms=t["torchao"],
                               ort_ms=t["ort"], openvino_ms=t.get("openvino"), qcompile_ms=t["native"],
                               qcompile_gemmlowp_ms=t["gemmlowp"], qcompile_onnx_ms=t["onnx"], qcompile_gops=gops,
                               gemmlowp_over_torchao=dict(ratio=gemmlowp_paired.ratio, low=gemmlowp_paired.low,
                                                          high=gemmlowp_paired.high),
                               peak_share=gops / (peak_gops_per_core() * threads), best=best,
                               best_over_target=target / t[best], paired_rival=rival,
                               paired=dict(ratio=paired.ratio, low=paired.low, high=paired.high, pairs=paired.pairs),
                               narrow_convs=decisions)
                    rows.append(row)
                    ratios = " | ".join(f"{t['float'] / t[k]:.2f}x" if k in t else "-"
                                        for k in ("torchao", "ort", "openvino", "native", "gemmlowp", "onnx"))
                    print(f"| {name} | {batch} | {threads} | {t['float']:.2f} | {ratios} | "
                          f"{gops:.0f} ({100 * row['peak_share']:.0f}%) | {target / t[best]:.3f}x ({best}) | {paired} "
                          f"({rival}) | {gemmlowp_paired} |", flush=True)
    print("\nspeed-ups are float time / int8 time (higher is faster); best / target is the fastest peer's time "
          "(torch.ao, onnxruntime, OpenVINO where installed) over the fastest qcompile variant's (named); paired is "
          "the same ratio timed head to head in adjacent pairs of calls, at the 10th percentile of each one's times, "
          "with a bootstrap 95% interval (the peer named); gemmlowp / torch.ao likewise for qcompile's own kernels\n")
    print("| model | calibration images | qcompile images/s | torch.ao images/s |")
    print("|---|---|---|---|")
    for c in calibration:
        print(f"| {c['model']} | {c['images']} | {c['qcompile_images_per_s']:.1f} | {c['torchao_images_per_s']:.1f} |")
    print("\nqcompile's export of each row, built with --onnx-narrow-convs measure at the row's batch and threads:")
    for row in rows:
        print(f"  {row['model']}, batch {row['batch']}, {row['threads']} threads: {row['narrow_convs'] or 'nothing to rewrite'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"latency": rows, "calibration": calibration}, indent=1))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
