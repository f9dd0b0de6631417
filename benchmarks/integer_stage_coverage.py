"""Which torchvision CNNs run whole on the integer stage (the gemmlowp backend), and how close each backend is.

    python benchmarks/integer_stage_coverage.py                 # every architecture below
    python benchmarks/integer_stage_coverage.py mobilenet_v3_small efficientnet_b0

Each model is torchvision's architecture with seeded random weights and
randomized batch-norm statistics (as the zoo test), calibrated on 16 of the
bundled photos (``builtin:photos``, resized for Inception V3) and scored on
8 others: ``fuse,calibrate,convert`` on the native backend (torch's x86
kernels, 7-bit activation grids) and on the gemmlowp backend (qcompile's
kernels, full 8-bit grids). "ops refused" names the quantized ops the
integer stage does not cover (the gemmlowp compile then stops, as it would
for a user); "dequantize" counts the int8 regions' exits. Output SQNR
against the float model, in dB. An error stops only its row.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qcompile.cpu_features import describe_cpu  # noqa: E402
from qcompile.data import open_data  # noqa: E402
from qcompile.diagnose.metrics import sqnr_db  # noqa: E402
from qcompile.errors import QCompileError  # noqa: E402
from qcompile.frontend.lower import lower  # noqa: E402
from qcompile.interpreter import Interpreter  # noqa: E402
from qcompile.pipeline import PassContext, run_pipeline  # noqa: E402
from tests.models import randomize_batch_norm  # noqa: E402

ARCHITECTURES = [
    "alexnet", "vgg11", "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2",
    "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_v2_s", "mnasnet0_5",
    "shufflenet_v2_x0_5", "squeezenet1_1", "densenet121", "googlenet", "inception_v3", "regnet_x_400mf",
    "regnet_y_400mf",
]
COLUMNS = ["model", "integer stage", "dequantize (gemmlowp)", "SQNR native (dB)", "SQNR gemmlowp (dB)", "seconds"]


def _images(size: int) -> tuple[list[tuple[torch.Tensor]], torch.Tensor]:
    photos = [b[0] for b in open_data("builtin:photos", limit=24, batch_size=8)]
    if size != photos[0].shape[-1]:
        photos = [F.interpolate(p, size=(size, size), mode="bilinear", align_corners=False) for p in photos]
    return [(p,) for p in photos[:2]], photos[2]


def measure(name: str) -> dict:
    torch.manual_seed(0)
    model = randomize_batch_norm(torchvision.models.get_model(name).eval())
    calib, x = _images(299 if name == "inception_v3" else 224)
    with torch.no_grad():
        want = model(x)
    row: dict = {"model": name}
    started = time.perf_counter()
    for backend in ("native", "gemmlowp"):
        graph = lower(model, (x[:1],))
        try:
            run_pipeline(graph, f"fuse,calibrate,convert{{backend={backend}}}", PassContext(calib_data=calib))
        except QCompileError as exc:
            refused = re.search(r"does not cover these quantized ops: (.*)", exc.message)
            row["integer stage"] = "refused: " + (refused.group(1) if refused else exc.message)
            continue
        with torch.no_grad():
            row[f"SQNR {backend} (dB)"] = round(sqnr_db(Interpreter(graph).run(x), want), 2)
        if backend == "gemmlowp":
            row["integer stage"] = "whole"
            row["dequantize (gemmlowp)"] = sum(n.op == "dequantize" for n in graph.nodes())
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=ARCHITECTURES)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    rows = []
    for name in args.models:
        try:
            rows.append(measure(name))
        except Exception as exc:  # noqa: BLE001 - a row records what stopped it
            rows.append({"model": name, "integer stage": f"error: {type(exc).__name__}: {str(exc)[:100]}"})
        print(rows[-1], file=sys.stderr, flush=True)
    print(f"CPU: {describe_cpu()}; torch {torch.__version__}\n")
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(str(row.get(c, "-")) for c in COLUMNS) + " |")


if __name__ == "__main__":
    main()
