"""The zoo table: lowering time, node count, round-trip error and fusions per model.

    python benchmarks/zoo_lowering.py                 # every model in tests/test_zoo.py
    python benchmarks/zoo_lowering.py resnet18 vit_b_16 --repeats 5 --json zoo.json

Lowering time is the median of ``--repeats`` runs (trace + shape propagation +
IR construction) at batch 1 on this machine's threads; the first run also
builds the model, so it is timed separately and not counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qcompile.codegen import load_model, write_model  # noqa: E402
from qcompile.frontend.loaders import load_model as load_user_model  # noqa: E402
from qcompile.frontend.lower import lower  # noqa: E402
from qcompile.pipeline import run_pipeline  # noqa: E402
from tests.test_zoo import TORCHVISION, _nonzero_weights, _scale_error  # noqa: E402


def measure(name: str, repeats: int) -> dict:
    torch.manual_seed(0)
    if name in ("mobilenet_v2-imagenet", "digit_cnn"):
        loaded = load_user_model("zoo:" + name.split("-")[0])
        model, x = loaded.module, loaded.example_inputs[0]
        x = torch.randn(x.shape)
    else:
        model = _nonzero_weights(torchvision.models.get_model(name).eval())
        size = 299 if name == "inception_v3" else 224
        x = torch.randn(1, 3, size, size)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        graph = lower(model, (x,))
        times.append(time.perf_counter() - start)
    with torch.no_grad():
        want = model(x)
        with tempfile.TemporaryDirectory() as out:
            write_model(graph, out)
            round_trip = _scale_error(load_model(out)(x), want)
    nodes = len(graph)
    stats = run_pipeline(graph, "fuse")[0].result.stats
    return dict(model=name, lowered=True, nodes=nodes, fused_nodes=len(graph),
                lower_s=statistics.median(times), round_trip=round_trip,
                fusions=sum(stats.values()), patterns=stats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=TORCHVISION + ["mobilenet_v2-imagenet", "digit_cnn"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    print("| model | lowered | nodes | nodes after fuse | lowering s (median) | round-trip error | fusions |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        try:
            row = measure(name, args.repeats)
        except Exception as exc:  # report and go on: one model must not hide the others
            row = dict(model=name, lowered=False, error=f"{type(exc).__name__}: {exc}")
            print(f"| {name} | no | | | | | {row['error'][:80]} |", flush=True)
        else:
            print(f"| {name} | yes | {row['nodes']} | {row['fused_nodes']} | {row['lower_s']:.2f} | "
                  f"{row['round_trip']:.1e} | {row['fusions']} |", flush=True)
        rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
