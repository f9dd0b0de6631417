"""Calibration throughput on several processes (torchrun, gloo) against one, and what they exchange.

    python benchmarks/distributed_calibration.py [--samples 256] [--rounds 3] [--json out.json]

The real MobileNetV2 (zoo:mobilenet_v2) is calibrated through the CLI on
``builtin:photo-crops`` (``--passes fuse,calibrate``, x86 preset: histogram
activation observers), as a user runs it: once in one process with as many
threads as there are cores, once in one process with one thread, and once
under ``torchrun --nproc_per_node N`` (one thread per process, torchrun's
default). The ``calibrate`` pass's wall time comes from ``--timing`` on rank
0; it includes the merge of the statistics and waiting for the slowest rank.
The three runs alternate, ``--rounds`` times; the table gives medians and
checks that every run wrote the same ``graph.qir``. It also lists the bytes
each rank contributes to the merge, counted from the graph's observers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qcompile.cpu_features import describe_cpu  # noqa: E402


def _calibrate_seconds(command: list[str], threads: int, out: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    run = subprocess.run(command + ["-o", str(out)], env=env, capture_output=True, text=True, cwd=ROOT)
    if run.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{run.stderr[-3000:]}")
    match = re.search(r"^calibrate\s+([0-9.]+)", run.stderr, re.MULTILINE)
    return float(match.group(1))


def _merge_bytes(pipeline: str) -> dict[str, int]:
    """What one rank sends into the merge of ``pipeline`` on MobileNetV2 (x86 preset)."""
    from qcompile.compiler import compile_model
    from qcompile.ir.node import NodeKind
    from qcompile.pipeline import parse_pipeline

    result = compile_model("zoo:mobilenet_v2", passes="fuse,stubs,observe")
    observers = [n for n in result.graph.nodes() if n.quant.observer is not None]
    bins = observers[0].quant.observer.bins
    histograms = sum(1 for n in observers if n.quant.observer.kind in ("histogram", "percentile", "entropy"))
    extremes = len(observers) * (4 + 4 + 8)  # min, max (float32), count (int64)
    hist = histograms * 2 * bins * 8  # at most 2 x bins float64 counts
    agreement = len(parse_pipeline(pipeline).passes) + 1  # one small all_gather per pass, and OUT
    return {"activation observers": len(observers), "histogram bins (at most)": 2 * bins,
            "extremes and counts, bytes": extremes, "histograms, bytes (at most)": hist,
            "agreement exchanges": agreement,
            "weights": sum(1 for n in result.graph.find(kind=NodeKind.MODULE) if n.quant.weight_observer)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    pipeline = "fuse,calibrate"
    common = ["zoo:mobilenet_v2", "--passes", pipeline, "--calib", "builtin:photo-crops",
              "--calib-samples", str(args.samples), "--batch-size", str(args.batch_size), "--timing",
              "--no-verdict"]
    variants = {
        f"1 process, {cores} threads": ([sys.executable, "-m", "qcompile", *common], cores),
        "1 process, 1 thread": ([sys.executable, "-m", "qcompile", *common], 1),
        f"{args.processes} processes (torchrun, gloo), 1 thread each":
            ([sys.executable, "-m", "torch.distributed.run", "--standalone",
              f"--nproc_per_node={args.processes}", "-m", "qcompile", *common], 1),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    graphs: set[bytes] = set()
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, (command, threads) in variants.items():
                out = Path(tmp) / f"{round_}-{len(seconds[name])}-{threads}-{name[:1]}"
                seconds[name].append(_calibrate_seconds(command, threads, out))
                graphs.add((out / "graph.qir").read_bytes())
    print(f"CPU: {describe_cpu()}, {cores} cores; MobileNetV2, {args.samples} photo crops, batches of "
          f"{args.batch_size}, median of {args.rounds} alternating rounds; all runs wrote "
          f"{'the same graph.qir' if len(graphs) == 1 else f'{len(graphs)} different graph.qir files'}\n")
    base = statistics.median(seconds[f"1 process, {cores} threads"])
    print("| run | calibrate (s) | samples/s | speed-up vs 1 process, all cores |\n|---|---|---|---|")
    table = {}
    for name, values in seconds.items():
        median = statistics.median(values)
        table[name] = {"seconds": values, "median": median}
        print(f"| {name} | {median:.2f} | {args.samples / median:.1f} | {base / median:.2f}x |")
    merge = _merge_bytes(pipeline)
    print("\nmerge, per rank: " + ", ".join(f"{k}: {v}" for k, v in merge.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": describe_cpu(), "runs": table, "merge": merge,
                                               "identical_graphs": len(graphs) == 1}, indent=1))


if __name__ == "__main__":
    main()
