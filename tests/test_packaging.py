"""passes/ and kernels/ import as qcompile.passes / qcompile.kernels from installed copies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROBE = (
    "import qcompile, qcompile.passes, qcompile.kernels, qcompile.passes.fuse;"
    "from qcompile.pipeline import registered_passes;"
    "assert 'fuse' in registered_passes();"
    "print(qcompile.__file__); print(qcompile.passes.__file__); print(qcompile.kernels.__file__)"
)


def _venv(path: Path) -> Path:
    # No pip of its own: the venv's bundled setuptools would be older than the
    # one the build needs; the outer pip installs into it with --python.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)],
                   check=True)
    return path / "bin" / "python"


def _install(python: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-build-isolation", *args], check=True, capture_output=True, text=True)


def _probe(python: Path, cwd: Path) -> list[str]:
    run = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, cwd=cwd, check=True)
    return run.stdout.split()


@pytest.mark.slow
def test_regular_install_ships_passes_inside_the_package(tmp_path):
    python = _venv(tmp_path / "venv")
    _install(python, str(REPO))
    files = _probe(python, tmp_path)
    site = str(tmp_path / "venv")
    assert all(f.startswith(site) for f in files), files
    assert files[1].endswith("qcompile/passes/__init__.py")
    assert files[2].endswith("qcompile/kernels/__init__.py")
    kernels = Path(files[2]).parent  # the kernel sources ship: the emulation builds from the installed copy
    assert {"gemmlowp.h", "gemmlowp_kernels.cuh", "gemmlowp_launch.cu"} <= {p.name for p in kernels.iterdir()}
    assert (kernels / "emulation" / "kernels_host.cpp").is_file() and (kernels / "emulation" / "cuda_host.h").is_file()
    script = tmp_path / "venv" / "bin" / "qcompile"
    run = subprocess.run([str(script), "passes"], capture_output=True, text=True, check=True)
    assert "fuse" in run.stdout


@pytest.mark.slow
def test_editable_install_maps_top_level_folders(tmp_path):
    python = _venv(tmp_path / "venv")
    _install(python, "-e", str(REPO))
    files = _probe(python, tmp_path)
    assert files == [str(REPO / "qcompile" / "__init__.py"), str(REPO / "passes" / "__init__.py"),
                     str(REPO / "kernels" / "__init__.py")]


def test_no_top_level_passes_package_is_installed():
    import importlib.util

    for name in ("passes", "kernels"):
        spec = importlib.util.find_spec(name)
        assert spec is None or "qcompile" not in (spec.origin or ""), f"top-level {name!r} leaked"
