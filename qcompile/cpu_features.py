"""What the x86 CPU this runs on can do, read at run time (Linux's /proc/cpuinfo).

Kernel behaviour differs between the CPUs qcompile runs on: without VNNI,
uint8 x int8 products are summed in pairs in saturating int16
(``vpmaddubsw``), so full 8-bit codes times 8-bit weights can saturate; with
VNNI (``vpdpbusd``) they are summed in int32 and cannot. Tests and
benchmarks ask here instead of assuming one machine.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or "unknown CPU", frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        if line.startswith("model name") and model in ("unknown CPU", platform.processor()):
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = frozenset(line.split(":", 1)[1].split())
    return model, flags


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``avx2``, ``avx512_vnni``...); empty where they cannot be read."""
    return _cpuinfo()[1]


def has_vnni() -> bool:
    """Whether the CPU has VNNI (AVX-512 VNNI or AVX-VNNI): int8 dot products summed in int32."""
    return bool({"avx512_vnni", "avx_vnni"} & cpu_flags())


def describe_cpu() -> str:
    """``model, AVX2, AVX-512 VNNI`` for benchmark tables."""
    model, flags = _cpuinfo()
    vnni = "AVX-512 VNNI" if "avx512_vnni" in flags else ("AVX-VNNI" if "avx_vnni" in flags else "no VNNI")
    amx = ", AMX-INT8" if "amx_int8" in flags else ""
    return f"{model}, {'AVX2' if 'avx2' in flags else 'no AVX2'}, {vnni}{amx}"
