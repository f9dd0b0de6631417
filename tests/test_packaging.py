"""qcompile as users install it: a wheel in a fresh virtual environment, and an editable checkout.

The venvs see the test run's own site-packages (torch, onnx...) through a
plain path entry, so no ``.pth`` file of it runs: in particular not the
editable finder that ``pip install -e .`` put there. What imports as
``qcompile`` in the wheel's venv is the wheel's copy, or nothing.
The wheel is built with pip's build isolation (the setuptools that
pyproject.toml asks for, whatever the base interpreter has).
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROBE = (
    "import qcompile, qcompile.passes, qcompile.kernels, qcompile.passes.fuse, qcompile.diagnose, qcompile.onnx;"
    "from qcompile.pipeline import registered_passes;"
    "assert 'fuse' in registered_passes();"
    "print(qcompile.__file__); print(qcompile.passes.__file__); print(qcompile.kernels.__file__)"
)


def _venv(path: Path) -> Path:
    """A venv without pip (the outer pip installs into it) that reaches the outer packages but runs none of
    their .pth files."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    inner = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    (Path(inner) / "outer_packages.pth").write_text("\n".join(sorted(outer)) + "\n")
    return python


def _pip(python: Path, *args: str, cwd: Path | None = None) -> None:
    run = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), *args], capture_output=True,
                         text=True, cwd=cwd)
    assert run.returncode == 0, run.stdout + run.stderr


def _probe(python: Path, cwd: Path) -> list[str]:
    run = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, cwd=cwd)
    assert run.returncode == 0, run.stderr
    return run.stdout.split()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    (built,) = out.glob("qcompile-*.whl")
    return built


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_compiles_exports_checks_reports_and_compares(tmp_path, wheel):
    python = _venv(tmp_path / "venv")
    _pip(python, "install", "-q", "--no-deps", str(wheel))
    files = _probe(python, tmp_path)
    site_dir = str(tmp_path / "venv")
    assert all(f.startswith(site_dir) for f in files), files  # the wheel's copy, not the checkout
    assert files[1].endswith("qcompile/passes/__init__.py") and files[2].endswith("qcompile/kernels/__init__.py")
    kernels = Path(files[2]).parent  # the kernel sources ship: the emulation builds from the installed copy
    assert {"gemmlowp.h", "gemmlowp_kernels.cuh", "gemmlowp_launch.cu"} <= {p.name for p in kernels.iterdir()}
    assert (kernels / "emulation" / "kernels_host.cpp").is_file()

    script = tmp_path / "venv" / "bin" / "qcompile"
    env = {**os.environ, "PYTHONPATH": ""}
    out = tmp_path / "out"
    run = subprocess.run([str(script), "zoo:digit_cnn", "--passes", "ptq", "--calib", "builtin:mnist5k",
                          "--calib-samples", "128", "--export", "onnx", "--check", "--report", "-o", str(out)],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    assert {"model.py", "weights.pt", "model.onnx", "report.html"} <= {p.name for p in out.iterdir()}
    run = subprocess.run([str(script), "compare", "zoo:digit_cnn", str(out), "--data", "builtin:mnist5k",
                          "--samples", "256", "--repeats", "3"], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    row = next(line for line in run.stdout.splitlines() if line.startswith("| out "))
    assert float(row.split("|")[5]) > 0.97  # agreement of the int8 digit CNN with float on MNIST


@pytest.mark.slow
def test_editable_install_maps_top_level_folders(tmp_path):
    python = _venv(tmp_path / "venv")
    _pip(python, "install", "-q", "--no-deps", "-e", str(REPO))
    files = _probe(python, tmp_path)
    assert files == [str(REPO / "qcompile" / "__init__.py"), str(REPO / "passes" / "__init__.py"),
                     str(REPO / "kernels" / "__init__.py")]


def test_no_top_level_passes_package_is_installed():
    import importlib.util

    for name in ("passes", "kernels"):
        spec = importlib.util.find_spec(name)
        assert spec is None or "qcompile" not in (spec.origin or ""), f"top-level {name!r} leaked"


def test_every_import_is_declared():
    """Third-party modules that qcompile's package imports are its dependencies (or guarded extras)."""
    import ast

    from qcompile.compat import tomllib

    declared = {"torch", "torchvision", "networkx", "numpy", "onnx", "onnxruntime", "ml_dtypes", "tomli"}
    extras = {"matplotlib", "mlflow", "skimage", "sklearn", "mlxtend", "digit_recognizer", "fdet"}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {d.split(";")[0].split("=")[0].split(">")[0].split("<")[0].strip().replace("-", "_").lower()
             for d in project["dependencies"]}
    assert declared <= names | {"tomli"}, declared - names
    stdlib = set(sys.stdlib_module_names)
    imported = set()
    for folder in ("qcompile", "passes", "kernels"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    foreign = imported - stdlib - {"qcompile", "__future__"}
    assert foreign <= declared | extras, sorted(foreign - declared - extras)
