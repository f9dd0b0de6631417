"""The README and docs/ say what the code does: generated references up to date, links alive, examples run."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qcompile.cli.reference import cli_reference, passes_reference

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
PLACEHOLDER = re.compile(r"\b(MODEL|DATA|OUT\d?|PIPELINE|NAME|FILE|PASS)\b")


def test_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, len(lines)
    assert lines[0] == "# qcompile"


def test_generated_references_are_current():
    """After changing a flag or a pass: python -m qcompile.cli.reference docs/"""
    assert (DOCS / "cli.md").read_text() == cli_reference()
    assert (DOCS / "passes.md").read_text() == passes_reference()


def test_every_relative_link_resolves():
    pages = [README, *DOCS.rglob("*.md")]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken


def test_every_benchmark_table_says_when_where_and_how():
    for page in (DOCS / "benchmarks").glob("*.md"):
        text = page.read_text()
        assert "Command(s):" in text and "CPU:" in text, page
        tables = text.count("\n|---")
        headed = len(re.findall(r"^## Table \d+ \(\d{4}-\d\d-\d\d, commit [0-9a-f]{7}\)", text, re.M))
        assert tables == headed, (page, tables, headed)


def _blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), re.S)


def _commands(page: Path) -> list[str]:
    """Indented shell lines that run qcompile on concrete arguments (no MODEL / DATA placeholders)."""
    found = []
    for line in page.read_text().splitlines():
        text = line.strip()
        if line.startswith("    ") and "qcompile " in text and not text.startswith("#"):
            text = text.split("&&")[-1].strip()  # the install steps before it have already run here
            text = text.split("  #")[0].strip()
            if text.startswith("qcompile ") and not PLACEHOLDER.search(text) and "[" not in text:
                found.append(text)
    return found


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
def test_readme_commands_and_example_run(tmp_path):
    commands = _commands(README)
    assert any(c.startswith("qcompile zoo:mobilenet_v2 --passes ptq") for c in commands), commands
    exe = shutil.which("qcompile")
    for command in commands:
        run = _run([exe, *shlex.split(command)[1:]], tmp_path)
        assert run.returncode == 0, f"{command}\n{run.stderr[-2000:]}"
    (python_block,) = _blocks(README, "python")
    run = _run([sys.executable, "-c", python_block + "\nimport torch\n"
                "assert model(torch.randn(2, 3, 224, 224)).shape == (2, 1000)\n"], tmp_path)
    assert run.returncode == 0, run.stderr


@pytest.mark.slow
@pytest.mark.parametrize("page", ["python-api.md", "writing-a-pass.md", "distributed.md"])
def test_docs_examples_run(tmp_path, page):
    for block in _blocks(DOCS / page, "python"):
        run = _run([sys.executable, "-c", block], tmp_path)
        assert run.returncode == 0, f"{page}:\n{block}\n{run.stderr[-2000:]}"
    exe = shutil.which("qcompile")
    for command in _commands(DOCS / page):
        run = _run([exe, *shlex.split(command.replace("examples/", f"{REPO}/examples/"))[1:]], tmp_path)
        assert run.returncode == 0, f"{command}\n{run.stderr[-2000:]}"
