"""CPU latency of the gemmlowp backend against the native backend (torch's x86 engine) and float.

    python benchmarks/gemmlowp_latency.py [--models resnet18 mobilenet_v2 digit_cnn] [--repeats 20]
        [--pairs 60] [--json out.json]

On a CPU the gemmlowp backend runs its CPU twin: integer convolutions with
the fixed-point output stage of ``kernels/gemmlowp.h`` fused
(``kernels/host_conv.cpp``, ``host_vnni512.cpp``, ``host_depthwise.cpp``),
in the best form the CPU has (printed). All models are emitted by qcompile
(``fuse,calibrate,convert`` on each backend) and timed in one process:
medians of ``--repeats`` runs as speed-ups over the fused float model
(channels-last), and "gemmlowp / native" timed head to head in adjacent
pairs (:mod:`qcompile.timing`: native's time over gemmlowp's at the 10th
percentile, with a bootstrap 95% interval; above 1 gemmlowp is faster). The
capped column runs the same gemmlowp model with ``QCOMPILE_BYTE_ISA`` set to
the form below this CPU's best (AVX2 under AVX-512 VNNI, AVX-512 VNNI under
AMX): the kernels of a CPU without the best one. Also the GEMM alone
(effective int8 GOPS of ``torch.ops.qcompile.qlinear``) and single
convolution layers; "% peak" is against the int8 peak of the form that ran,
measured on this CPU by ``benchmarks/int8_peak.py`` (``tdpbusd`` on 2 x 2 tiles
for AMX, 512-bit ``vpdpbusd`` for AVX-512 VNNI, the ``vpmaddubsw`` sequence for
AVX2). "plan / modules" times the gemmlowp model head to head against itself
with ``QCOMPILE_PLAN=0``, its calls through its modules rather than its plan
of kernel calls (``kernels/plan.py``); above 1 the plan is faster.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qcompile.kernels import fixed_point as fp  # noqa: E402
from qcompile.kernels.geometry import conv_output_size  # noqa: E402

from benchmarks.int8_latency import DATA, build, float_layout, macs, median_ms  # noqa: E402
from benchmarks.int8_peak import peak_gops_per_core  # noqa: E402
from qcompile.codegen import load_model, write_model  # noqa: E402
from qcompile.cpu_features import describe_cpu  # noqa: E402
from qcompile.data import open_data  # noqa: E402
from qcompile.frontend.lower import lower  # noqa: E402
from qcompile.pipeline import PassContext, run_pipeline  # noqa: E402
from qcompile.quant.config import QuantConfig  # noqa: E402
from qcompile.timing import head_to_head  # noqa: E402


def emit(model, calib, tmp: Path, name: str, pipeline: str):
    graph = lower(model, (calib[0][0][:1],))
    run_pipeline(graph, pipeline, PassContext(calib_data=calib, quant_config=QuantConfig.from_preset("x86")))
    write_model(graph, tmp / name)
    return graph, load_model(tmp / name)


def activation_codes(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """uint8 codes distributed as the twin meets them: with the x86 preset (scales for codes up to 127),
    at most 0.1% of any layer's input codes of ResNet-18 and MobileNetV2 exceed 127 on the bundled photos.
    The byte form of the GEMM corrects those one by one, so their share matters for its speed."""
    codes = torch.randint(0, 128, shape, dtype=torch.uint8, generator=generator)
    above = torch.rand(shape, generator=generator) < 0.001
    codes[above] = torch.randint(128, 256, (int(above.sum()),), dtype=torch.uint8, generator=generator)
    return codes


def gemm_gops(rows: int, depth: int, channels: int, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    x = activation_codes((rows, depth), g)
    w = torch.randint(-127, 128, (channels, depth), dtype=torch.int8, generator=g)
    bias = torch.zeros(channels, dtype=torch.int32)
    m0, exponent = fp.quantize_multipliers(torch.full((channels,), 1e-4, dtype=torch.float64))
    ms = median_ms(lambda: torch.ops.qcompile.qlinear(x, 40, w, bias, m0, exponent, 0, 0, 255), repeats)
    return 2 * rows * depth * channels / (ms / 1000) / 1e9


# (name, input channels, output channels, size, kernel, stride, groups): layers of ResNet-18 and MobileNetV2
LAYERS = (("resnet18 layer1 3x3", 64, 64, 56, 3, 1, 1), ("resnet18 layer2 3x3", 128, 128, 28, 3, 1, 1),
          ("resnet18 layer3 3x3", 256, 256, 14, 3, 1, 1), ("resnet18 layer4 3x3", 512, 512, 7, 3, 1, 1),
          ("mobilenet_v2 pointwise 16->96", 16, 96, 112, 1, 1, 1),
          ("mobilenet_v2 pointwise 32->192", 32, 192, 56, 1, 1, 1),
          ("mobilenet_v2 pointwise 384->64", 384, 64, 14, 1, 1, 1),
          ("mobilenet_v2 pointwise 960->160", 960, 160, 7, 1, 1, 1),
          ("mobilenet_v2 depthwise 144, 56x56", 144, 144, 56, 3, 1, 144),
          ("mobilenet_v2 depthwise 96, stride 2", 96, 96, 112, 3, 2, 96))


def layer_gops(cin: int, cout: int, size: int, kernel: int, stride: int, groups: int, repeats: int) -> float:
    """Effective GOPS of one ``torch.ops.qcompile.qconv2d`` on random codes (batch 1)."""
    g = torch.Generator().manual_seed(0)
    x = activation_codes((1, cin, size, size), g).contiguous(memory_format=torch.channels_last)  # as written
    w = torch.randint(-127, 128, (cout, cin // groups, kernel, kernel), dtype=torch.int8, generator=g)
    bias = torch.zeros(cout, dtype=torch.int32)
    m0, exponent = fp.quantize_multipliers(torch.full((cout,), 1e-4, dtype=torch.float64))
    geometry = ([stride] * 2, [kernel // 2] * 2, [1, 1], groups)
    ms = median_ms(lambda: torch.ops.qcompile.qconv2d(x, 40, w, bias, m0, exponent, 0, 0, 255, *geometry),
                   repeats)
    out = conv_output_size(size, kernel, stride, kernel // 2, 1)
    return 2 * out * out * cout * (cin // groups) * kernel * kernel / (ms / 1000) / 1e9


def peak_for_form(form: str) -> tuple[float, str]:
    """The per-core int8 peak the form's kernels are measured against, and its name: AMX's tdpbusd loop (2 x 2
    tiles loaded from L1), the 512-bit vpdpbusd loop for AVX-512 VNNI, else the AVX2 vpmaddubsw loop."""
    if form == "amx":
        return peak_gops_per_core("amx"), "the AMX tdpbusd loop"
    if form == "avx512-vnni":
        return peak_gops_per_core("avx512-vnni"), "the 512-bit vpdpbusd loop"
    return peak_gops_per_core("avx2"), "the AVX2 vpmaddubsw loop"


def cap_below_best() -> str:
    """The byte form below this CPU's best: what a CPU without the best one runs (AVX-512 VNNI under AMX)."""
    from qcompile.kernels import host_conv

    return "avx512-vnni" if host_conv.byte_isa() == "amx" else "avx2"


def with_byte_isa(cap: str, run):
    """``run()`` with the byte form capped at ``cap`` (QCOMPILE_BYTE_ISA), restored after."""
    import os

    from qcompile.kernels import host_conv

    before = os.environ.get("QCOMPILE_BYTE_ISA")
    os.environ["QCOMPILE_BYTE_ISA"] = cap
    host_conv.byte_isa.cache_clear()
    host_conv.depthwise_isa.cache_clear()
    try:
        return run()
    finally:
        if before is None:
            del os.environ["QCOMPILE_BYTE_ISA"]
        else:
            os.environ["QCOMPILE_BYTE_ISA"] = before
        host_conv.byte_isa.cache_clear()
        host_conv.depthwise_isa.cache_clear()


def without_plan(run):
    """``run()`` with the emitted model's calls going through its modules (``QCOMPILE_PLAN=0``), not its plan
    of kernel calls (``kernels/plan.py``)."""
    import os

    os.environ["QCOMPILE_PLAN"] = "0"
    try:
        return run()
    finally:
        del os.environ["QCOMPILE_PLAN"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2", "digit_cnn"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=60, help="pairs timed head to head per row")
    parser.add_argument("--json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    from qcompile.kernels import host_conv

    cap = cap_below_best()
    peak, peak_name = peak_for_form(host_conv.byte_isa())
    print(f"CPU: {describe_cpu()}; gemmlowp runs the CPU twin, byte form {host_conv.byte_isa()}, depthwise "
          f"{host_conv.depthwise_isa()}; capped: QCOMPILE_BYTE_ISA={cap}; % peak is against {peak_name} of "
          f"benchmarks/int8_peak.py ({peak:.0f} GOPS per core)\n")
    print("| model | batch | threads | float ms | native x86 | gemmlowp | gemmlowp / native x86, paired (95%) "
          f"| gemmlowp capped at {cap} | gemmlowp GOPS (% peak) | plan / modules, paired (95%) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        model = build(name)
        calib = list(open_data(DATA.get(name, "builtin:photos"), batch_size=16, limit=32))
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            float_graph, fair_float = emit(model, calib, tmp, "float", "fuse")
            layout = float_layout(fair_float, calib[0][0][:1])
            fair_float = fair_float.to(memory_format=layout)
            _, x86 = emit(model, calib, tmp, "x86", "fuse,calibrate,convert{backend=native}")
            _, gemmlowp = emit(model, calib, tmp, "gemmlowp", "fuse,calibrate,convert{backend=gemmlowp}")
            work = macs(float_graph)
            torch.backends.quantized.engine = "x86"
            for threads in (1, 2):
                torch.set_num_threads(threads)
                for batch in (1, 8):
                    x = torch.cat([b[0] for b in calib])[:batch]
                    with torch.no_grad():
                        base = median_ms(partial(fair_float, x.contiguous(memory_format=layout)), args.repeats)
                        native = median_ms(partial(x86, x), args.repeats)
                        ours = median_ms(partial(gemmlowp, x), args.repeats)
                        capped = with_byte_isa(cap, partial(median_ms, partial(gemmlowp, x), args.repeats))
                        paired = head_to_head(partial(gemmlowp, x), partial(x86, x), args.pairs)
                        planned = head_to_head(partial(gemmlowp, x), partial(without_plan, partial(gemmlowp, x)),
                                               args.pairs)
                    gops = 2 * work * batch / (ours / 1000) / 1e9
                    share = gops / (peak * threads)
                    rows.append(dict(model=name, batch=batch, threads=threads, float_ms=base,
                                     native_x86=base / native, gemmlowp=base / ours,
                                     gemmlowp_over_native=dict(ratio=paired.ratio, low=paired.low, high=paired.high),
                                     gemmlowp_capped=base / capped, cap=cap, gemmlowp_gops=gops,
                                     plan_over_modules=dict(ratio=planned.ratio, low=planned.low,
                                                            high=planned.high)))
                    print(f"| {name} | {batch} | {threads} | {base:.2f} | {base / native:.2f}x | {base / ours:.2f}x | "
                          f"{paired} | {base / capped:.2f}x | {gops:.1f} ({share:.1%}) | {planned} |", flush=True)
    torch.set_num_threads(2)
    print("\nthe GEMM alone (torch.ops.qcompile.qlinear, 2 threads):")
    for shape in ((256, 512, 1024), (256, 2048, 1024)):
        gops = gemm_gops(*shape, args.repeats)
        print(f"  rows x depth x channels = {' x '.join(map(str, shape))}: {gops:.1f} GOPS "
              f"({gops / (2 * peak):.1%} of the 2-core int8 peak)")
    torch.set_num_threads(1)
    print("\nsingle layers (torch.ops.qcompile.qconv2d, batch 1, one thread):")
    for name, *shape in LAYERS:
        capped = with_byte_isa(cap, partial(layer_gops, *shape, args.repeats))
        gops = layer_gops(*shape, args.repeats)
        print(f"  {name}: {gops:.1f} GOPS ({gops / peak:.1%} of the peak; {capped:.1f} capped at {cap})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
