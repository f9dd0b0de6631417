"""Golden-file comparison: exact text, a readable diff, and an update mode."""

from __future__ import annotations

import difflib
from pathlib import Path

GOLDEN_DIR = Path(__file__).parent / "golden"


class GoldenMismatch(AssertionError):
    """The output differs from the golden file."""


def check_golden(actual: str, path: Path, update: bool) -> None:
    """Compare ``actual`` with the file at ``path`` exactly.

    With ``update``, write ``actual`` to ``path`` instead. A missing golden
    file is a failure (not a silent pass), so a forgotten file cannot hide a
    regression.
    """
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    if not path.exists():
        raise GoldenMismatch(f"golden file {path} is missing; run pytest --update-golden to create it")
    expected = path.read_text()
    if actual != expected:
        diff = "".join(difflib.unified_diff(
            expected.splitlines(keepends=True), actual.splitlines(keepends=True),
            fromfile=f"{path.name} (golden)", tofile="actual", n=2))
        raise GoldenMismatch(f"output differs from {path}:\n{diff}\n"
                             "if the change is intended, run pytest --update-golden")
