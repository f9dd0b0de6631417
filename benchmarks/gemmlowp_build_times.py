"""ResNet-50 on the gemmlowp backend: calibration, conversion, and the emitted module's first call.

    python benchmarks/gemmlowp_build_times.py [--images 64]

torchvision's ResNet-50 architecture (random initialisation: the work does
not depend on the weights) on the bundled photos at 224 x 224, 2 threads.
``calibrate`` and ``convert{backend=gemmlowp}`` are timed as passes; the
emitted module's first call is timed in a fresh process twice: with an empty
kernel cache (the host compiler builds the CPU twin's libraries) and with
the cache that build left (every later process), against its second call.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qcompile.kernels.host_conv import byte_isa  # noqa: E402

from qcompile.codegen import write_model  # noqa: E402
from qcompile.cpu_features import describe_cpu  # noqa: E402
from qcompile.data import open_data  # noqa: E402
from qcompile.frontend.lower import lower  # noqa: E402
from qcompile.pipeline import PassContext, PassManager, Timing, parse_pipeline  # noqa: E402

FIRST_CALL = """
import sys, time, torch
torch.set_num_threads(2)
start = time.perf_counter()
from qcompile.codegen import load_model
model = load_model(sys.argv[1])
x = torch.rand(1, 3, 224, 224)
loaded = time.perf_counter()
with torch.no_grad():
    model(x)
    first = time.perf_counter()
    model(x)
    second = time.perf_counter()
print(loaded - start, first - loaded, second - first)
"""


def first_call(model_dir: Path, cache: Path) -> tuple[float, float, float]:
    """(import and load, first call, second call) in seconds, in a fresh process with this kernel cache."""
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    out = subprocess.run([sys.executable, "-c", FIRST_CALL, str(model_dir)], env=env, capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
    return tuple(float(v) for v in out.stdout.split()[-3:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    data = open_data("builtin:photos", limit=args.images, batch_size=8)
    graph = lower(model, (torch.zeros(1, 3, 224, 224),))
    timing = Timing()
    PassManager(parse_pipeline("fuse,calibrate,convert{backend=gemmlowp}"), [timing]).run(
        graph, PassContext(calib_data=data))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_model(graph, tmp / "model")
        cold = first_call(tmp / "model", tmp / "empty-cache")
        warm = first_call(tmp / "model", tmp / "empty-cache")  # the cache the cold run left
    print(f"CPU: {describe_cpu()}; ResNet-50, {args.images} photos, 2 threads, gemmlowp byte form {byte_isa()}\n")
    print("| step | seconds |")
    print("|---|---|")
    for name, seconds, _ in timing.seconds:
        print(f"| pass {name} | {seconds:.2f} |")
    print(f"| first call, empty kernel cache (builds the libraries) | {cold[1]:.2f} |")
    print(f"| first call, cached kernels | {warm[1]:.2f} |")
    print(f"| second call | {warm[2]:.3f} |")
    print(f"| import and load the emitted module (cached kernels) | {warm[0]:.2f} |")


if __name__ == "__main__":
    main()
