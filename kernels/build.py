"""Building a kernel source into a shared library with the host C++ compiler, cached by content."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "qcompile" / "kernels"


def shared_library(source: Path, depends: tuple[Path, ...], flags: tuple[str, ...] = (),
                   also: tuple[Path, ...] = ()) -> ctypes.CDLL:
    """Compile ``source`` and the sources ``also`` into one library (C++20, -O2, threads) unless a build of the
    same sources is cached; load it. ``depends`` are the headers they include."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("building qcompile's host kernels needs a C++20 compiler (g++); install g++ or set CXX")
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in (source, *also, *depends)) + " ".join(flags).encode())
    target = cache_dir() / f"{source.stem}_{digest.hexdigest()[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        command = [compiler, "-std=c++20", "-O2", "-pthread", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
                   *flags, "-o", str(partial), str(source), *map(str, also)]
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"building {source.name} failed:\n{' '.join(command)}\n{run.stderr}")
        partial.replace(target)  # atomic: a concurrent build or an interrupted one never leaves half a library
    return ctypes.CDLL(str(target))
