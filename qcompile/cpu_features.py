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
    model, flags, fields = platform.processor() or "unknown CPU", frozenset(), {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name", model)
    flags = frozenset(fields.get("flags", "").split())
    core = _amd_core(fields.get("vendor_id", ""), fields.get("cpu family", ""), flags)
    return (f"{model} ({core})" if core and core not in model else model), flags


def _amd_core(vendor: str, family: str, flags: frozenset[str]) -> str | None:
    """An AMD CPU's core generation from its family, which a virtual machine's generic model name ("AMD EPYC")
    leaves out: family 25 is Zen 3 or, with AVX-512, Zen 4; family 26 is Zen 5."""
    if vendor != "AuthenticAMD" or not family.isdigit():
        return None
    family_number = int(family)
    if family_number == 25:
        return "Zen 4" if "avx512f" in flags else "Zen 3"
    return {23: "Zen or Zen 2", 26: "Zen 5"}.get(family_number)


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
