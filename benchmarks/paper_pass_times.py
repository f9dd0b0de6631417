"""Time of the paper's passes on ResNet-50, and calibration throughput with their extra statistics.

    python benchmarks/paper_pass_times.py [--images 32] [--repeats 3] [--json out.json]

ResNet-50 (torchvision's architecture; the weights are torchvision's random
initialisation, which does not change the work) on the bundled photos,
224 x 224, x86 preset. Each pipeline is run ``--repeats`` times from a fresh
lowering; every pass's wall time is the median over the repeats.
Calibration throughput is images per second of ``calibrate`` alone, once
collecting only the ranges (what ``convert`` needs) and once with the
moments that ``aciq`` / ``bitalloc`` request on top.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qcompile.data import open_data  # noqa: E402
from qcompile.frontend.lower import lower  # noqa: E402
from qcompile.pipeline import PassContext, PassManager, Timing, parse_pipeline  # noqa: E402
from qcompile.quant.config import QuantConfig  # noqa: E402

PIPELINES = {
    "ranges only": "fuse,calibrate,convert",
    "paper, simulated": "fuse,calibrate,bitalloc{budget=4 activations=true},aciq{bits=4 per-channel=true},"
                        "simulate{bits=4 weight-bits=4 bias-correct=mean-std}",
    "paper, integer": "fuse,calibrate,bitalloc{budget=4},aciq{bits=4},bias-correct{samples=32},convert",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    data = open_data("builtin:photos", limit=args.images, batch_size=8)
    x = next(iter(data))[0][:1]
    print(f"ResNet-50, {args.images} photos at 224x224, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} runs")
    results = {}
    for label, text in PIPELINES.items():
        times: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            graph = lower(model, (x,))
            timing = Timing()
            ctx = PassContext(calib_data=data, quant_config=QuantConfig.from_preset("x86"))
            PassManager(parse_pipeline(text), [timing]).run(graph, ctx)
            for name, seconds, _ in timing.seconds:
                times.setdefault(name, []).append(seconds)
        medians = {name: statistics.median(values) for name, values in times.items()}
        results[label] = medians
        print(f"\n{label}: {text}")
        print("| pass | seconds |\n|---|---|")
        for name, seconds in medians.items():
            print(f"| {name} | {seconds:.2f} |")
    plain, extra = results["ranges only"]["calibrate"], results["paper, simulated"]["calibrate"]
    print(f"\ncalibration throughput: {args.images / plain:.1f} images/s (ranges), "
          f"{args.images / extra:.1f} images/s (ranges + moments, {extra / plain - 1:.0%} more time)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
