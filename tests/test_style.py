"""The code base stays ruff-clean (the rules are in pyproject.toml)."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_ruff_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed; pip install -e '.[test]'")
    run = subprocess.run([ruff, "check", str(REPO)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
