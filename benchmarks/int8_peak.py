"""This CPU's int8 peak, measured rather than looked up.

    python benchmarks/int8_peak.py

Builds ``int8_peak.cpp`` (the AVX2 vpmaddubsw / vpaddsw / vpmaddwd / vpaddd
sequence fbgemm's int8 kernels use on CPUs without VNNI) and times it on one
thread; the
result, in GOPS (2 operations per multiply-accumulate), is the per-core peak
the latency benchmarks report their share of. Prints the CPU's model and
whether it has AVX-512 VNNI.
"""

from __future__ import annotations

import ctypes
import statistics
import sys
import time
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qcompile.kernels.build import shared_library  # noqa: E402

HERE = Path(__file__).resolve().parent


def cpu_description() -> str:
    model, flags = "unknown CPU", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and model == "unknown CPU":
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    vnni = "AVX-512 VNNI" if "avx512_vnni" in flags else ("AVX-VNNI" if "avx_vnni" in flags else "no VNNI")
    return f"{model}, {'AVX2' if 'avx2' in flags else 'no AVX2'}, {vnni}"


@cache
def peak_gops_per_core(repeats: int = 7) -> float:
    """Median GOPS of the int8 multiply-accumulate loop on one thread."""
    lib = shared_library(HERE / "int8_peak.cpp", (), flags=("-mavx2",))
    lib.qc_int8_peak_loop.restype = ctypes.c_int64
    lib.qc_int8_peak_loop.argtypes = [ctypes.c_int64, ctypes.POINTER(ctypes.c_int32)]
    sink = ctypes.c_int32()
    lib.qc_int8_peak_loop(1_000_000, ctypes.byref(sink))
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        macs = lib.qc_int8_peak_loop(20_000_000, ctypes.byref(sink))
        rates.append(2 * macs / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


if __name__ == "__main__":
    print(cpu_description())
    print(f"int8 peak, one core: {peak_gops_per_core():.0f} GOPS (AVX2 vpmaddubsw sequence, as fbgemm)")
