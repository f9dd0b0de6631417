"""This CPU's int8 peak, measured rather than looked up.

    python benchmarks/int8_peak.py

Builds ``int8_peak.cpp`` (the AVX2 vpmaddubsw / vpaddsw / vpmaddwd / vpaddd
sequence fbgemm's int8 kernels use on CPUs without VNNI, and 512-bit
vpdpbusd where the CPU has AVX-512 VNNI) and times it on one thread; the
result, in GOPS (2 operations per multiply-accumulate), is the per-core peak
the latency benchmarks report their share of. Prints the CPU's model and
whether it has AVX-512 VNNI.

Also whether onnxruntime's integer GEMM on this CPU is exact: its
``MatMulInteger`` of uint8 codes of 255 by int8 weights of 127, against the
exact sum. Without VNNI, the vpmaddubsw sequence's int16 pair sums saturate
there (2 * 255 * 127 > 32767).
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

from qcompile.cpu_features import describe_cpu  # noqa: E402

HERE = Path(__file__).resolve().parent


def cpu_description() -> str:
    return describe_cpu()


@cache
def peak_gops_per_core(isa: str = "avx2", repeats: int = 7) -> float:
    """Median GOPS of an int8 multiply-accumulate loop on one thread: ``avx2`` (the vpmaddubsw sequence),
    ``avx512-vnni`` (512-bit vpdpbusd) or ``amx`` (tdpbusd on four accumulator tiles, each pixel and weight tile
    loaded again from the L1 cache for every four multiplies, as the kernels do); the last two only on a CPU
    that has them."""
    lib = shared_library(HERE / "int8_peak.cpp", (), flags=("-mavx2",))
    loop = {"avx2": lib.qc_int8_peak_loop, "avx512-vnni": lib.qc_int8_peak_vnni512_loop,
            "amx": lib.qc_int8_peak_amx_loop}[isa]
    loop.restype = ctypes.c_int64
    loop.argtypes = [ctypes.c_int64, ctypes.POINTER(ctypes.c_int32)] + ([ctypes.c_int] if isa == "amx" else [])
    extra = (1,) if isa == "amx" else ()
    sink = ctypes.c_int32()
    iterations = 200_000 if isa == "amx" else 20_000_000  # each tile multiply is 256 vpdpbusd's work
    if loop(iterations // 20, ctypes.byref(sink), *extra) == 0:
        raise RuntimeError(f"{isa}: this build or process cannot use it")
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        macs = loop(iterations, ctypes.byref(sink), *extra)
        rates.append(2 * macs / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def onnxruntime_integer_gemm(depth: int = 64) -> tuple[int, int]:
    """(onnxruntime's, exact) value of one output of ``MatMulInteger`` with every code 255 and every weight 127."""
    import numpy as np
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.full((depth, 8), 127, np.int8), "w")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, depth])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, None)], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"a": np.full((1, depth), 255, np.uint8)})[0]
    return int(got[0, 0]), 255 * 127 * depth


if __name__ == "__main__":
    print(cpu_description())
    print(f"int8 peak, one core: {peak_gops_per_core():.0f} GOPS (AVX2 vpmaddubsw sequence, as fbgemm)")
    from qcompile.cpu_features import cpu_flags

    if {"avx512f", "avx512_vnni"} <= cpu_flags():
        print(f"int8 peak, one core: {peak_gops_per_core('avx512-vnni'):.0f} GOPS (512-bit vpdpbusd)")
    if {"amx_tile", "amx_int8"} <= cpu_flags():
        print(f"int8 peak, one core: {peak_gops_per_core('amx'):.0f} GOPS (AMX tdpbusd, 2 x 2 tiles loaded from L1)")
    got, exact = onnxruntime_integer_gemm()
    verdict = "exact" if got == exact else f"saturated: {got / exact:.1%} of the exact sum"
    print(f"onnxruntime MatMulInteger, 64 x (255 * 127): {got} against {exact} ({verdict})")
