"""Errors that qcompile reports to users.

Every error a user can cause carries two parts: what is wrong, and what to do
about it. The CLI prints both and exits with status 2, without a traceback.
"""

from __future__ import annotations


class QCompileError(Exception):
    """A problem with the user's input, with a hint on how to fix it.

    Args:
        message: What is wrong, naming the file, node, pass or option involved.
        hint: What to do next. Optional, but most errors should have one.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class PipelineError(QCompileError):
    """A pipeline string that cannot be parsed or whose order is wrong."""


class LoweringError(QCompileError):
    """A model that cannot be lowered to the IR."""


class VerifyError(QCompileError):
    """A graph that breaks an IR invariant (usually a bug in a pass)."""


class PassError(QCompileError):
    """A pass that failed or broke its contract."""


class CheckFailed(QCompileError):
    """A numerical cross-check failed (exit status 3): the outputs were written but disagree."""


class TargetMissed(QCompileError):
    """No pipeline tried met the accuracy target (exit status 4)."""
