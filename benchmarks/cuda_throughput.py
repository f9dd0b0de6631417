"""GPU throughput of qcompile's int8 CUDA kernels against float16 / bfloat16, and their agreement with the CPU.

    python benchmarks/cuda_throughput.py [--models resnet50 resnet18 mobilenet_v2] [--batches 1 32 256]
        [--repeats 20] [--budget 300] [--out gpu_check.md] [--device cuda]

Each model is converted once for the gemmlowp backend (``fuse,calibrate,convert{backend=gemmlowp}``,
calibrated on 64 of the bundled photos), emitted, loaded and moved to the GPU with ``.to(device)``: the
emitted modules' ops run on qcompile's CUDA kernels (int8 tensor cores for the convolutions). Against it, the
same float model in float16 and bfloat16 (eager) and float16 under ``torch.compile``, all channels-last.
Throughput is images per second from the median of ``--repeats`` batches timed with CUDA events after
warm-up. "bit-exact" compares the int8 model's outputs on the GPU with the same model on the CPU (the CPU
twin) for one batch of up to 8 photos. ResNet-50 and ResNet-18 have random weights (with randomized
BatchNorm statistics; speed does not depend on them), MobileNetV2 its real ImageNet weights.
``torch.compile`` cells are left out, and say so, once the compile time spent passes ``--budget`` seconds.

``--device cpu`` runs every step on the CPU (the int8 model on the CPU twin): a check of this script on a
machine without a GPU, not a measurement of the CUDA kernels.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qcompile.codegen import load_model, write_model  # noqa: E402
from qcompile.data import open_data  # noqa: E402
from qcompile.frontend.loaders import load_model as load_user_model  # noqa: E402
from qcompile.frontend.lower import lower  # noqa: E402
from qcompile.pipeline import PassContext, run_pipeline  # noqa: E402
from qcompile.quant.config import QuantConfig  # noqa: E402
from tests.models import randomize_batch_norm  # noqa: E402

PIPELINE = "fuse,calibrate,convert{backend=gemmlowp}"


def build(name: str) -> torch.nn.Module:
    if name == "mobilenet_v2":
        return load_user_model("zoo:mobilenet_v2").module
    torch.manual_seed(0)
    return randomize_batch_norm(torchvision.models.get_model(name)).eval()


def int8_model(model: torch.nn.Module, calib: list, tmp: Path, name: str) -> torch.nn.Module:
    graph = lower(model, (calib[0][0][:1],))
    run_pipeline(graph, PIPELINE, PassContext(calib_data=calib, quant_config=QuantConfig.from_preset("x86")))
    write_model(graph, tmp / name)
    return load_model(tmp / name)


def images_per_second(fn, x: torch.Tensor, repeats: int, device: str) -> float:
    with torch.no_grad():
        for _ in range(3):
            fn(x)
        times = []
        for _ in range(repeats):
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(x)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                t0 = time.perf_counter()
                fn(x)
                times.append(time.perf_counter() - t0)
    return x.shape[0] / statistics.median(times)


def batch_of(photos: torch.Tensor, batch: int, device: str, dtype=torch.float32) -> torch.Tensor:
    repeated = photos.repeat((batch + len(photos) - 1) // len(photos), 1, 1, 1)[:batch]
    return repeated.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)


def describe_device(device: str) -> str:
    if device != "cuda":
        from qcompile.cpu_features import describe_cpu

        return f"CPU {describe_cpu()} (--device cpu: a check of the script, not of the CUDA kernels)"
    props = torch.cuda.get_device_properties(0)
    return (f"{props.name}, {props.multi_processor_count} SMs, sm_{props.major}{props.minor}, "
            f"{props.total_memory / 2**30:.0f} GiB; torch {torch.__version__} (CUDA {torch.version.cuda})")


def commit() -> str:
    run = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent)
    return run.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "resnet18", "mobilenet_v2"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32, 256])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--budget", type=float, default=300, help="seconds of torch.compile before its cells stop")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = args.device
    if device == "cuda":
        from qcompile.kernels import cuda

        cuda.load(verbose=True)  # a clear error without a GPU or nvcc; builds the kernels (cached)
    calib_source, eval_source = open_data("builtin:photos", batch_size=16, limit=128).interleaved_split()
    calib, photos = list(calib_source), torch.cat([b[0] for b in eval_source])
    lines = [f"GPU check ({datetime.date.today()}, commit {commit()}): {describe_device(device)}", "",
             f"`python benchmarks/cuda_throughput.py --models {' '.join(args.models)} --batches "
             f"{' '.join(map(str, args.batches))} --repeats {args.repeats}`; images/s, median of {args.repeats} "
             "batches; int8: qcompile's gemmlowp model (int8 tensor cores); all channels-last.", "",
             "| model | batch | float16 eager | bfloat16 eager | float16 torch.compile | qcompile int8 "
             "| int8 / float16 eager | int8 bit-exact with the CPU |", "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    compile_spent = 0.0
    for name in args.models:
        model = build(name)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            quantized = int8_model(model, calib, Path(tmp), name)
            convert_s = time.perf_counter() - t0
            sample = batch_of(photos, min(8, len(photos)), "cpu")
            with torch.no_grad():
                on_cpu = quantized(sample)
                quantized = quantized.to(device)
                on_device = quantized(sample.to(device))
            exact = torch.equal(on_device.cpu(), on_cpu)
            halves = {dtype: copy.deepcopy(model).to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
                      for dtype in (torch.float16, torch.bfloat16)}
            compiled = None
            for batch in args.batches:
                fp16 = images_per_second(halves[torch.float16], batch_of(photos, batch, device, torch.float16),
                                         args.repeats, device)
                bf16 = images_per_second(halves[torch.bfloat16], batch_of(photos, batch, device, torch.bfloat16),
                                         args.repeats, device)
                compiled_cell = "left out (budget)"
                if compile_spent < args.budget:
                    t0 = time.perf_counter()
                    if compiled is None:
                        compiled = torch.compile(halves[torch.float16])
                    x16 = batch_of(photos, batch, device, torch.float16)
                    with torch.no_grad():
                        compiled(x16)  # compiles for this batch
                    compile_spent += time.perf_counter() - t0
                    compiled_cell = f"{images_per_second(compiled, x16, args.repeats, device):,.0f}"
                int8 = images_per_second(quantized, batch_of(photos, batch, device), args.repeats, device)
                row = (f"| {name} | {batch} | {fp16:,.0f} | {bf16:,.0f} | {compiled_cell} | {int8:,.0f} | "
                       f"{int8 / fp16:.2f}x | {'yes' if exact else 'NO'} |")
                lines.append(row)
                print(row, flush=True)
            print(f"  ({name}: converted in {convert_s:.0f} s on the CPU)", flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
